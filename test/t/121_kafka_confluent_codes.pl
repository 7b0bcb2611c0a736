# Kafka REST v2 per-record codes as Confluent's REST Proxy sends them: 50002 (not retriable: a
# dead letter at once, whatever max_attempts), 50003 (retriable), 40101 / 40301 (authentication /
# authorization: the endpoint's problem, never a dead letter), the old aliases 1 (= 50002) and
# 2 (= 50003); and HTTP 401 / 403 for every format: retried behind the breaker, no dead letters.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start(partitions => 4);
my $node = CourierTest::node('confluent', conf => [
	"courier.breaker_failure_threshold = 3",
	"courier.breaker_reset_ms = 300",
]);
$node->safe_psql('postgres', 'CREATE TABLE sent (event_id uuid PRIMARY KEY, outbox text)');

my $fast = '"retry_base_ms": 20, "retry_max_ms": 200';
my $n = 0;

sub q1 { $node->safe_psql('postgres', $_[0]) }
sub dead_count { q1("SELECT count(*) FROM courier.dead_letters WHERE outbox = '$_[0]'::regclass") }

# make(FORMAT, OPTIONS, EVENTS, KEYS): a fresh outbox on a fresh sink state; returns its name.
sub make
{
	my ($format, $opts, $events, $keys) = @_;
	my $ob = 'ob' . ++$n;
	my $url = $format eq 'cloudevents' ? $sink->url("/hook/$ob") : $sink->url('/kafka');
	q1(qq{SELECT courier.create_outbox('$ob', '$url', '$format', '{"topic": "t$n", $fast$opts}');
		  INSERT INTO sent SELECT courier.send('$ob', jsonb_build_object('n', i), '$ob-k' || (i % $keys)), '$ob'
		    FROM generate_series(1, $events) i});
	return $ob;
}

# every committed event of the outbox arrived, or is one of its dead letters
sub all_accounted
{
	my ($ob) = @_;
	my %got = map { $_ => 1 } @{ $sink->ids };
	my %dead = map { $_ => 1 } split /\n/, q1("SELECT event_id FROM courier.dead_letters WHERE outbox = '$ob'::regclass");
	return scalar grep { !$got{$_} && !$dead{$_} } split /\n/, q1("SELECT event_id FROM sent WHERE outbox = '$ob'");
}

sub drained
{
	my ($ob, $dead, $what) = @_;
	return CourierTest::wait_until(sub { CourierTest::pending($node, $ob) == 0 && dead_count($ob) == $dead },
		timeout => 120, what => $what);
}

# --- not retriable: 50002 and its alias 1, with max_attempts 0 (retry forever)
for my $code (50002, 1)
{
	$sink->clear_faults;
	$sink->reset;
	$sink->config(order_field => 'n', record_data => JSON::PP::true, kafka_shape => 'confluent');
	# scope record: exactly these 3 records fail (a RecordTooLargeException is the record's own,
	# not its partition batch's)
	$sink->faults({ kafka_record_errors => { code => $code, count => 3, scope => 'record' } });
	my $ob = make('kafka_rest_v2', ', "max_attempts": 0', 60, 6);
	ok(drained($ob, 3, "$code: drained"), "error_code $code: the outbox drains with max_attempts 0");
	is(dead_count($ob), 3, "error_code $code: exactly the 3 refused records are dead letters");
	is(q1("SELECT max(attempts) FROM courier.dead_letters WHERE outbox = '$ob'::regclass"), 1,
		"error_code $code: each was sent once, not retried");
	like(q1("SELECT min(last_error) FROM courier.dead_letters WHERE outbox = '$ob'::regclass"),
		qr/error_code $code.*not retriable/, "error_code $code: the reason says it is not retriable");
	is(all_accounted($ob), 0, "error_code $code: every other event was delivered");
	is($sink->stats->{order_violations}, 0, "error_code $code: per-key order held");
}

# --- retriable: 50003 and its alias 2
for my $code (50003, 2)
{
	$sink->clear_faults;
	$sink->reset;
	$sink->faults({ kafka_record_errors => { code => $code, count => 10 } });
	my $ob = make('kafka_rest_v2', ', "max_attempts": 0', 100, 10);
	ok(drained($ob, 0, "$code: drained"), "error_code $code: the outbox drains, no dead letters");
	is($sink->stats->{faults_injected}{kafka_record_errors}, 10, "error_code $code: 10 records were refused");
	cmp_ok(q1("SELECT retries FROM courier.outbox_stats WHERE outbox = '$ob'::regclass"), '>=', 10,
		"error_code $code: they were retried");
	is(all_accounted($ob), 0, "error_code $code: every event delivered");
	is($sink->stats->{duplicates}, 0, "error_code $code: the written records were not sent again");
	is($sink->stats->{order_violations}, 0, "error_code $code: per-key order held");
}

# --- credentials refused: per-record 40101 / 40301, HTTP 401 / 403 (Kafka and CloudEvents)
my @refusals = (
	['kafka_rest_v2', 'record 40101', { kafka_record_errors => { code => 40101 } }],
	['kafka_rest_v2', 'record 40301', { kafka_record_errors => { code => 40301 } }],
	['kafka_rest_v2', 'HTTP 401', { status => { code => 401 } }],
	['cloudevents', 'HTTP 403', { status => { code => 403 } }],
);
for my $r (@refusals)
{
	my ($format, $what, $plan) = @$r;
	$sink->clear_faults;
	$sink->reset;
	$sink->faults($plan);
	my $ob = make($format, ', "max_attempts": 2', 30, 3);
	ok(CourierTest::wait_until(sub {
		q1("SELECT breaker_state FROM courier.outbox_stats WHERE outbox = '$ob'::regclass") =~ /open/
		  && q1("SELECT COALESCE(max(attempts), 0) FROM $ob") >= 3 }, timeout => 60, what => "$what: breaker open"),
		"$what: the breaker opens and rows are retried past max_attempts");
	like(q1("SELECT last_error FROM courier.outbox_stats WHERE outbox = '$ob'::regclass"),
		qr/refused our credentials/, "$what: last_error says the endpoint refused our credentials");
	is(dead_count($ob), 0, "$what: no dead letters while refused");
	$sink->clear_faults;
	ok(drained($ob, 0, "$what: drained after the fix"), "$what: delivery resumes when the endpoint accepts again");
	is(dead_count($ob), 0, "$what: still no dead letters");
	is(all_accounted($ob), 0, "$what: every event delivered");
}

is($sink->stats->{internal_errors}, 0, 'the sink had no internal errors');
$sink->stop;
$node->stop;
done_testing();
