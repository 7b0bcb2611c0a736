# Attack: bypass courier.max_payload_bytes with UPDATE.  The limit used to be checked by the INSERT
# trigger only; three rows updated to 30 MB took the worker from 30 MB to 400 MB.  Now a BEFORE
# UPDATE trigger holds payload, headers and topic to the limit and keeps id, event_id and key
# fixed; the event is delivered as it was written, and the worker's memory stays small.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('attack_payload_update');
my $url = $sink->url('/hook');

CourierTest::tenants($node, 'eve', 'alice');
$node->safe_psql('postgres', qq{SET ROLE eve; SELECT courier.create_outbox('eve.o', '$url')});
$node->safe_psql('postgres', qq{SET ROLE alice; SELECT courier.create_outbox('alice.o', '$url')});

# eve's events wait (paused) while she tries to grow them.
$node->safe_psql('postgres', q{
	SET ROLE eve;
	SELECT courier.pause('eve.o');
	SELECT courier.send('eve.o', jsonb_build_object('n', i), 'k' || i) FROM generate_series(1, 3) i;
});
my $big = q{jsonb_build_object('blob', repeat('x', 30 * 1024 * 1024))};
my @attempts = (
	[ 'payload',                 "UPDATE eve.o SET payload = $big" ],
	[ 'headers',                 "UPDATE eve.o SET headers = jsonb_build_object('X-Blob', repeat('x', 30 * 1024 * 1024))" ],
	[ 'topic',                   "UPDATE eve.o SET topic = repeat('t', 30 * 1024 * 1024)" ],
	[ 'ON CONFLICT DO UPDATE',   "INSERT INTO eve.o (id, payload) SELECT id, '{}' FROM eve.o ON CONFLICT (id) DO UPDATE SET payload = $big" ],
	[ 'a growing jsonb_set',     "UPDATE eve.o SET payload = jsonb_set(payload, '{pad}', to_jsonb(repeat('y', 2 * 1024 * 1024)))" ],
);
for my $a (@attempts)
{
	my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE eve; $a->[1]");
	like($err, qr/ERROR:  event (payload|column "\w+") is too large: \d+ bytes/, "UPDATE of $a->[0] beyond the limit is refused");
}
for my $a ([ 'id', 'id = id + 100' ], [ 'event_id', 'event_id = gen_random_uuid()' ], [ 'key', "key = repeat('k', 30 * 1024 * 1024)" ])
{
	my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE eve; UPDATE eve.o SET $a->[1]");
	like($err, qr/the $a->[0] of an event in outbox "o" cannot be changed/, "UPDATE of $a->[0] is refused");
}
my ($rc, $out, $err) = $node->psql('postgres', 'SET ROLE eve; SET courier.max_payload_bytes = 100000000');
like($err, qr/permission denied/, 'eve cannot raise courier.max_payload_bytes');

# Disabling pg_courier's UPDATE trigger makes the outbox one the worker must not serve.
$node->safe_psql('postgres', 'SET ROLE eve; ALTER TABLE eve.o DISABLE TRIGGER courier_outbox_update');
is($node->safe_psql('postgres', q{SELECT courier._outbox_shape_problem('eve.o')}),
	q{pg_courier's BEFORE UPDATE trigger (courier._outbox_before_update) is missing or disabled},
	'an outbox without its UPDATE trigger is reported as broken');
$node->safe_psql('postgres', 'SET ROLE eve; ALTER TABLE eve.o ENABLE TRIGGER courier_outbox_update');

# A legitimate small correction passes; the events go out as written (and corrected).
$node->safe_psql('postgres', q{SET ROLE eve; UPDATE eve.o SET payload = payload || '{"fixed": true}' WHERE key = 'k1'});
$node->safe_psql('postgres', q{SET ROLE eve; SELECT courier.resume('eve.o')});
$node->safe_psql('postgres', q{SET ROLE alice; SELECT courier.send('alice.o', '{"n": 9}')});
ok(CourierTest::wait_until(sub {
	CourierTest::pending($node, 'eve.o') == 0 && CourierTest::pending($node, 'alice.o') == 0
}, timeout => 60, what => 'delivered'), 'every event is delivered');
ok($sink->wait_for(sub { $_[0]->stats->{unique} >= 4 }, timeout => 30, what => '4 events'), 'the sink got all four');
cmp_ok($sink->stats->{bytes}, '<', 1024 * 1024, 'nothing large was sent');

# The worker never held a large row (the attack took it to 400 MB of private memory).
my $pid = CourierTest::worker_pid($node);
my ($anon) = slurp_file("/proc/$pid/status") =~ /^RssAnon:\s+(\d+) kB/m;
cmp_ok($anon, '<', 100 * 1024, "the worker's private memory stays small (${anon} kB)");

CourierTest::no_takeover($node);

$node->stop;
$sink->stop;
done_testing();
