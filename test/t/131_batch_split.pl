# A batch the endpoint refuses whole is split to find what it refuses: a 400 on a CloudEvents
# batch holding one event the receiver refuses delivers the others once and dead-letters that one;
# a 413 splits until the parts fit, and only an event too large on its own is dead-lettered (413);
# courier.max_request_bytes / the option max_request_bytes bound every batched request.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('split', conf => ["courier.poll_interval = '100ms'"]);
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200';

# scenario(NAME, OUTBOX OPTIONS, SQL inserting the events, expected dead letters): returns the
# dead letters' errors; checks each other event arrived exactly once, in order per key.
sub scenario
{
	my ($name, $ob, $opts, $insert, $dead) = @_;
	$node->safe_psql('postgres', qq{SELECT courier.create_outbox('$ob', '${\ $sink->url("/$ob") }', 'cloudevents', '$opts')});
	my $total = $node->safe_psql('postgres', "BEGIN; $insert; SELECT count(*) FROM $ob; COMMIT;");
	ok(CourierTest::wait_until(sub { CourierTest::pending($node, $ob) == 0 }, timeout => 60, what => "$name drained"),
		"$name: drained");
	my @errors = split /\n/, $node->safe_psql('postgres',
		"SELECT last_error FROM courier.dead_letters WHERE outbox = '$ob'::regclass ORDER BY id");
	is(scalar @errors, $dead, "$name: $dead dead letter(s)");
	my $stats = $sink->stats;
	is($stats->{unique}, $total - $dead, "$name: every other event arrived");
	is($stats->{duplicates}, 0, "$name: none twice");
	is($stats->{order_violations}, 0, "$name: order per key held") or diag explain $stats->{violation_examples};
	return @errors;
}

# 400: one refused event in a batch of 40.
$sink->reset;
$sink->config(order_field => 'n', reject_types => ['bad'], record_raw => JSON::PP::true);
my @errors = scenario('400', 'refused', qq({$fast, "batch": true}), q{
	INSERT INTO refused (topic, key, payload)
	  SELECT CASE WHEN i = 17 THEN 'bad' ELSE 'ok' END, 'k' || (i % 4), jsonb_build_object('n', i)
	    FROM generate_series(1, 40) i}, 1);
like($errors[0], qr/^HTTP 400/, '400: the refused event is dead-lettered with the answer');
is(scalar(grep { $_->{status} == 400 && (() = $_->{body} =~ /"specversion"/g) == 1 && $_->{body} =~ /"type":"bad"/ } @{ $sink->raw }), 1,
	'400: the refused event was finally sent alone');

# 400 with on_dead_letter = 'block': the refused event's later events of its key wait behind its
# dead letter (taken out of the later halves); the other keys are delivered.
$sink->reset;
$node->safe_psql('postgres', qq{SELECT courier.create_outbox('blocking', '${\ $sink->url("/blocking") }', 'cloudevents',
	'{$fast, "batch": true, "on_dead_letter": "block"}')});
$node->safe_psql('postgres', q{
	INSERT INTO blocking (topic, key, payload)
	  SELECT CASE WHEN i = 17 THEN 'bad' ELSE 'ok' END, 'k' || (i % 4), jsonb_build_object('n', i)
	    FROM generate_series(1, 40) i});
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', q{SELECT count(*) FROM courier.dead_letters WHERE outbox = 'blocking'::regclass}) == 1 &&
	$sink->stats->{unique} == 34 }, timeout => 60, what => 'block: the other keys delivered'),
	'block: the refused event is dead, the other keys delivered');
is($node->safe_psql('postgres', q{SELECT string_agg(payload->>'n', ',' ORDER BY id) FROM blocking}), '21,25,29,33,37',
	"block: the refused event's key waits behind its dead letter");
ok(!(grep { $_->{key} eq 'k1' && $_->{data}{n} > 17 } @{ $sink->events }), 'block: none of them was sent');
is($sink->stats->{duplicates}, 0, 'block: none twice');

# 413: the sink takes at most 4000 bytes; events of about 500 bytes; one of 6000 bytes.
$sink->reset;
$sink->config(reject_types => undef, max_body => 4000);
@errors = scenario('413', 'large', qq({$fast, "batch": true}), q{
	INSERT INTO large (topic, key, payload)
	  SELECT 'ok', 'k' || (i % 3),
	         jsonb_build_object('n', i, 'pad', repeat('x', CASE WHEN i = 25 THEN 6000 ELSE 400 END))
	    FROM generate_series(1, 60) i}, 1);
like($errors[0], qr/^HTTP 413/, '413: only the event too large on its own is dead-lettered, with 413');
ok(!(grep { $_->{status} == 200 && $_->{body_bytes} > 4000 } @{ $sink->raw }), '413: every accepted request fits the limit');

# max_request_bytes: no batched request above 2048 bytes (events of about 500 bytes).
$sink->reset;
$sink->config(max_body => undef);
scenario('max_request_bytes', 'bounded', qq({$fast, "batch": true, "max_request_bytes": 2048}), q{
	INSERT INTO bounded (topic, key, payload)
	  SELECT 'ok', 'k' || (i % 3), jsonb_build_object('n', i, 'pad', repeat('x', 400))
	    FROM generate_series(1, 60) i}, 0);
my @sizes = map { $_->{body_bytes} } @{ $sink->raw };
cmp_ok(scalar @sizes, '>=', 15, 'max_request_bytes: 60 events of 500 bytes took at least 15 requests');
ok(!(grep { $_ > 2048 } @sizes), 'max_request_bytes: no request above 2048 bytes') or diag "@sizes";

done_testing();
