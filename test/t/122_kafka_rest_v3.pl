# Kafka REST v3 (format kafka_rest_v3): the cluster id discovered with GET /v3/clusters (and again
# when the proxy says it is unknown), records:batch with 207 answers and per-entry failures retried
# in order per key, STRING keys, Kafka headers, and the CloudEvents Kafka binding: every record is
# judged by the official SDK's Kafka.toEvent and validate(), as a Kafka consumer would.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use CourierSink;
use CourierTest;

my $root = "$FindBin::Bin/../..";
my $sink = CourierSink->start(partitions => 4);
my $node = CourierTest::node('kafka_v3');
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200';
my $url = $sink->url('/kafka');

sub q1 { $node->safe_psql('postgres', $_[0]) }

# --- discovery, per-entry failures (retriable 50003 on 40 entries), headers, order per key
$sink->config(order_field => 'n', record_data => JSON::PP::true);
$sink->faults({ seed => 7, kafka_record_errors => { code => 50003, rate => 0.3, count => 40 } });
# (a refused entry fails the rest of its partition's entries in the request, as a Kafka producer batch
# does: an event may be refused several times running for other keys' entries, so no attempt limit)
q1(qq{SELECT courier.create_outbox('v3', '$url', 'kafka_rest_v3', '{"topic": "orders", "batch_size": 50, "max_attempts": 0, $fast}');
	  SELECT count(courier.send('v3', jsonb_build_object('n', i), 'k' || (i % 15), NULL,
	                            jsonb_build_object('X-Trace', 't-' || i, 'Content-Type', 'text/plain', 'ce_id', 'spoofed')))
	    FROM generate_series(1, 300) i});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'v3') == 0 }, timeout => 120, what => 'v3 drained'),
	'300 events delivered through records:batch');
my $stats = $sink->stats;
is($stats->{faults_injected}{kafka_record_errors}, 40, '40 entries were refused (50003) in 207 answers');
is($stats->{unique}, 300, 'every event written');
is($stats->{duplicates}, 0, 'the entries the proxy wrote were not sent again');
is($stats->{order_violations}, 0, 'per-key order held across per-entry failures');
is($stats->{status_counts}{207} > 0 ? 1 : 0, 1, 'the proxy answered 207');
is(q1("SELECT count(*) FROM courier.dead_letters WHERE outbox = 'v3'::regclass"), '0', 'no dead letters');

my $events = $sink->events;
my ($bad_headers, $bad_keys) = (0, 0);
for my $e (@$events)
{
	my %h;
	push @{ $h{ lc $_->{name} } }, $_->{value} for @{ $e->{kafka}{headers} // [] };
	$bad_headers++ unless @{ $h{'content-type'} // [] } == 1 && $h{'content-type'}[0] eq 'application/cloudevents+json'
	  && @{ $h{'x-trace'} // [] } == 1 && $h{'x-trace'}[0] eq "t-$e->{data}{n}"
	  && !(grep { /^ce_/ } keys %h);
	$bad_keys++ unless decode_base64($e->{kafka}{key_bytes} // '') eq 'k' . ($e->{data}{n} % 15);
}
is($bad_headers, 0, "every record has content-type application/cloudevents+json (once), its row's X-Trace header, and no ce_ header");
is($bad_keys, 0, 'every key reached Kafka as its own bytes (STRING)');

# the official CloudEvents SDK, Kafka binding, over every record
my ($in, $out, $err) = (JSON::PP->new->encode($events), '', '');
IPC::Run::run([ $ENV{COURIER_SINK_NODE} // 'node', "$root/test/receivers/kafka_records_check.js" ],
	\$in, \$out, \$err);
my $verdict = eval { decode_json($out) } // { checked => 0, errors => [$err] };
is($verdict->{checked}, 300, 'the SDK looked at 300 records');
is($verdict->{structured}, 300, 'Kafka.toEvent recognised every record as a structured-mode CloudEvent');
is($verdict->{valid}, 300, 'every event passed validate()') or diag explain $verdict->{errors};

# --- the cluster id changes: 404 "Cluster ... not found", discovered again, nothing lost
$sink->clear_faults;
$sink->reset;
$sink->config(cluster_id => 'sink-cluster-2');
q1(q{SELECT count(courier.send('v3', jsonb_build_object('n', 1000 + i), 'k' || (i % 5))) FROM generate_series(1, 20) i});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'v3') == 0 }, timeout => 60, what => 'v3 drained again'),
	'delivery goes on after the cluster id changed');
my @reqs = map { "$_->{method} $_->{url} $_->{status}" } @{ $sink->requests };
ok((grep { m{^POST /kafka/v3/clusters/sink-cluster-1/topics/orders/records:batch 404$} } @reqs),
	'the old cluster id was answered 404');
ok((grep { m{^GET /kafka/v3/clusters 200$} } @reqs), 'the cluster id was discovered again');
ok((grep { m{^POST /kafka/v3/clusters/sink-cluster-2/topics/orders/records:batch 207$} } @reqs),
	'records went to the new cluster');
is($sink->stats->{unique}, 20, 'all 20 events arrived');
is(q1("SELECT count(*) FROM courier.dead_letters WHERE outbox = 'v3'::regclass"), '0', 'still no dead letters');

# --- cluster_id as an option, raw payloads (envelope none): no content-type header
$sink->reset;
$sink->config(id_field => 'event_id');
q1(qq{SELECT courier.create_outbox('v3raw', '$url', 'kafka_rest_v3',
                                   '{"topic": "raw", "cluster_id": "sink-cluster-2", "envelope": "none"}');
	  SELECT courier.send('v3raw', '{"n": 1, "event_id": "e-1"}', 'key-1', NULL, '{"X-Trace": "r"}')});
ok($sink->wait_for(sub { $_[0]->count('e-1') == 1 }, timeout => 60, what => 'the raw record'), 'the raw record arrived');
my ($raw) = grep { $_->{id} eq 'e-1' } @{ $sink->events };
is_deeply($raw->{kafka}{headers}, [ { name => 'X-Trace', value => 'r' } ],
	'envelope none: the row headers only (the value is no CloudEvent)');
is_deeply($raw->{data}, { n => 1, event_id => 'e-1' }, 'envelope none: the value is the payload');
ok(!(grep { $_->{method} eq 'GET' } @{ $sink->requests }), 'with the cluster_id option nothing is discovered');

# --- discovery refused (401): visible in outbox_stats, retried, then delivery
$sink->reset;
$sink->config(id_field => undef);
$sink->faults({ status => { code => 401, match => { path_prefix => '/locked' } } });
my $locked = $sink->url('/locked');
q1(qq{SELECT courier.create_outbox('v3locked', '$locked', 'kafka_rest_v3', '{"topic": "locked", $fast}');
	  SELECT courier.send('v3locked', '{"n": 1}', 'k')});
ok(CourierTest::wait_until(sub {
	q1("SELECT last_error FROM courier.outbox_stats WHERE outbox = 'v3locked'::regclass")
	  =~ /could not discover the Kafka cluster id .*HTTP 401/ }, timeout => 60, what => 'discovery failure shown'),
	'a refused discovery shows in last_error');
is(CourierTest::pending($node, 'v3locked'), '1', 'the event waits');
$sink->clear_faults;
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'v3locked') == 0 }, timeout => 60,
	what => 'v3locked drained'), 'once the proxy answers, the cluster is discovered and the event delivered');
is(q1("SELECT count(*) FROM courier.dead_letters WHERE outbox = 'v3locked'::regclass"), '0', 'no dead letter');

is($sink->stats->{internal_errors}, 0, 'the sink had no internal errors');
$sink->stop;
$node->stop;
done_testing();
