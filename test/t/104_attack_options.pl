# Attack: one role's outbox options against everyone's worker.  Options that override a GUC are
# bounded like the GUC (max_inflight 3000 once ran the worker out of file descriptors); retention
# is at most 10 years (100000000 years broke every outbox's purge with "timestamp out of range").
# Refused through create_outbox, alter_outbox and direct writes to courier.outboxes; values stored
# before 0.2.0 are brought inside the bounds by the upgrade; the largest allowed values work.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('attack_options');
my $url = $sink->url('/hook');

CourierTest::tenants($node, 'eve', 'alice');
$node->safe_psql('postgres', qq{SET ROLE eve; SELECT courier.create_outbox('eve.o', '$url')});
$node->safe_psql('postgres', qq{SET ROLE alice; SELECT courier.create_outbox('alice.o', '$url')});

# Every bounded option: one past each bound is refused, by every way in, naming the range.
my %bounds = (
	batch_size => 'courier.batch_size', max_inflight => 'courier.max_inflight',
	timeout_ms => 'courier.http_timeout_ms', retry_base_ms => 'courier.retry_base_ms',
	retry_max_ms => 'courier.retry_max_ms', max_attempts => 'courier.max_attempts');
for my $opt (sort keys %bounds)
{
	my ($min, $max) = split /\|/, $node->safe_psql('postgres',
		"SELECT min_val || '|' || max_val FROM pg_settings WHERE name = '$bounds{$opt}'");
	for my $bad ($min - 1, $max + 1, 2147483648, '1e100')
	{
		my ($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE eve; SELECT courier.create_outbox('eve.n', '$url', 'cloudevents', '{"$opt": $bad}')});
		like($err, qr/outbox option "$opt" must be an integer from $min to $max/, "$opt = $bad: create_outbox refuses it");
		($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE eve; SELECT courier.alter_outbox('eve.o', options => '{"$opt": $bad}')});
		like($err, qr/must be an integer from $min to $max/, "$opt = $bad: alter_outbox refuses it");
		($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE eve; UPDATE courier.outboxes SET options = '{"$opt": $bad}' WHERE outbox = 'eve.o'::regclass});
		like($err, qr/must be an integer from $min to $max/, "$opt = $bad: a direct UPDATE refuses it");
	}
	$node->safe_psql('postgres', qq{SET ROLE eve; SELECT courier.alter_outbox('eve.o', options => '{"$opt": $max}')});
	$node->safe_psql('postgres', qq{SET ROLE eve; SELECT courier.alter_outbox('eve.o', options => '{"$opt": $min}')});
}

for my $bad ('100000000 years', '10 years 1 day', '3653 days', '87700 hours', '-1 day', '1 month -31 days', 'infinity', 'soon')
{
	my ($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE eve; SELECT courier.alter_outbox('eve.o', options => '{"retention": "$bad"}')});
	like($err, qr/outbox option "retention" must be a positive interval of at most 10 years/, "retention \"$bad\" is refused");
}
$node->safe_psql('postgres', q{SET ROLE eve; SELECT courier.alter_outbox('eve.o', options => '{"retention": "10 years"}')});
is($node->safe_psql('postgres', q{SELECT options->>'retention' FROM courier.outboxes WHERE outbox = 'eve.o'::regclass}),
	'10 years', 'retention of 10 years is accepted');

# The largest values work: eve's outbox at the maximums delivers, and so does alice's.
$node->safe_psql('postgres', q{SET ROLE eve; SELECT courier.alter_outbox('eve.o', options =>
	'{"retention": "10 years", "max_inflight": 1024, "batch_size": 100000, "timeout_ms": 3600000}')});
$node->safe_psql('postgres', q{
	SET ROLE eve; SELECT count(courier.send('eve.o', jsonb_build_object('n', i), 'k' || (i % 50))) FROM generate_series(1, 200) i});
$node->safe_psql('postgres', q{SET ROLE alice; SELECT courier.send('alice.o', '{"n": 1}')});
ok(CourierTest::wait_until(sub {
	CourierTest::pending($node, 'eve.o') == 0 && CourierTest::pending($node, 'alice.o') == 0
}, timeout => 60, what => 'delivered'), 'outboxes at the maximum settings deliver');
is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.delivered_events WHERE outbox = 'eve.o'::regclass}), '200',
	'retained for 10 years');

# Values stored before 0.2.0 are brought inside the bounds by the upgrade (with a warning).
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('old', qq{
	CREATE EXTENSION pg_courier VERSION '0.1.0';
	SELECT courier.create_outbox('o', '$url', 'cloudevents', '{"max_inflight": 3000, "batch_size": 2147483647, "retention": "100000000 years", "topic": "t"}');
});
my ($rc, $out, $err) = $node->psql('old', q{ALTER EXTENSION pg_courier UPDATE TO '0.2.0'});
is($rc, 0, 'the upgrade runs');
like($err, qr/WARNING:  options of outbox public.o brought within their bounds/, 'and says what it changed');
is($node->safe_psql('old', q{SELECT options::text FROM courier.outboxes}),
	'{"topic": "t", "retention": "10 years", "batch_size": 100000, "max_inflight": 1024}', 'to the bounds');

unlike(slurp_file($node->logfile), qr/timestamp out of range/, 'no purge failure');
CourierTest::no_takeover($node);

$node->stop;
$sink->stop;
done_testing();
