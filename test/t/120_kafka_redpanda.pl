# Kafka REST v2 against Redpanda's HTTP Proxy, which answers one offsets entry per partition
# written, not per record: such an answer acknowledges every record of the request (none is sent
# again).  Also: the binary embedded format (keys reach Kafka as their own bytes) and produce URLs
# built from endpoints with a query string or a trailing slash.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use CourierSink;
use CourierTest;

my $sink = CourierSink->start(partitions => 4);
my $node = CourierTest::node('redpanda');

# --- 1000 events over 50 keys in batches of 100, Redpanda's answer shape
$sink->config(kafka_shape => 'redpanda', order_field => 'n', record_data => JSON::PP::true);
my $url = $sink->url('/kafka');
$node->safe_psql('postgres', qq{
	SELECT courier.create_outbox('rp', '$url', 'kafka_rest_v2', '{"topic": "orders", "batch_size": 100}');
	SELECT count(courier.send('rp', jsonb_build_object('n', i), 'k' || (i % 50), 'orders'))
	  FROM generate_series(1, 1000) i;
});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'rp') == 0 }, timeout => 120, what => 'rp drained'),
	'1000 events delivered to the Redpanda-shaped proxy');
my $stats = $sink->stats;
is($stats->{accepted}, 1000, 'exactly 1000 records written (none sent again)');
is($stats->{duplicates}, 0, 'no record written twice');
is($stats->{unique}, 1000, '1000 distinct events');
is($stats->{order_violations}, 0, 'per-key order held');
is($node->safe_psql('postgres', "SELECT count(*) FROM courier.dead_letters WHERE outbox = 'rp'::regclass"), '0',
	'no dead letters');
is($node->safe_psql('postgres', "SELECT failed_attempts FROM courier.outbox_stats WHERE outbox = 'rp'::regclass"), '0',
	'no answer was taken for a failure');

# --- keys: json embedded format writes the key as JSON text, binary as its own bytes
$sink->reset;
$sink->config(kafka_shape => 'confluent');
my $qurl = $sink->url('/kafka/?tenant=a');
$node->safe_psql('postgres', qq{
	SELECT courier.create_outbox('kjson', '$url/', 'kafka_rest_v2', '{"topic": "keys-json"}');
	SELECT courier.create_outbox('kbin', '$qurl', 'kafka_rest_v2', '{"topic": "keys-bin", "embedded_format": "binary"}');
	SELECT courier.send('kjson', '{"n": 1}', 'order-42');
	SELECT courier.send('kbin', '{"n": 1}', 'order-42');
});
ok($sink->wait_for(sub { $_[0]->stats->{unique} >= 2 }, timeout => 60, what => 'two keyed records'),
	'both records arrived');
my %by_topic = map { $_->{topic} => $_ } @{ $sink->events };
is(decode_base64($by_topic{'keys-json'}{kafka}{key_bytes}), '"order-42"',
	'json embedded format: the proxy writes the key as JSON, quotes included');
is(decode_base64($by_topic{'keys-bin'}{kafka}{key_bytes}), 'order-42',
	'binary embedded format: the key reaches Kafka as its own bytes');
is($by_topic{'keys-bin'}{data}{n}, 1, 'binary embedded format: the value decodes to the CloudEvent with the payload');
my %paths = map { $_->{url} => $_->{headers}{'content-type'} } @{ $sink->requests };
is($paths{'/kafka/topics/keys-json'}, 'application/vnd.kafka.json.v2+json',
	'a trailing slash of the endpoint is not doubled');
is($paths{'/kafka/topics/keys-bin?tenant=a'}, 'application/vnd.kafka.binary.v2+json',
	'the topic goes into the path, before the query string; binary content type');

# --- a topic Kafka refuses is a dead letter of its own, never a request to /topics/
$node->safe_psql('postgres', q{SELECT courier.send('kjson', '{"n": 2}', 'k', '..')});
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM courier.dead_letters WHERE outbox = 'kjson'::regclass") == 1
}, timeout => 60, what => 'the ".." row dead-lettered'), 'a row with topic ".." goes to the dead letters');
like($node->safe_psql('postgres', "SELECT last_error FROM courier.dead_letters WHERE outbox = 'kjson'::regclass"),
	qr/invalid Kafka topic name/, 'its reason says why');
ok(!(grep { $_->{url} =~ m{/topics/?$} } @{ $sink->requests }), 'no request went to /topics/');

# --- Redpanda's entries are per partition and come in no particular order: an answer with as many
# entries as records, one of them with an error code, cannot say which record failed, so no record
# of it is taken as written (the injected answer wrote nothing: both events must arrive later)
$sink->reset;
$sink->config(kafka_shape => 'redpanda', order_field => 'n');
$sink->faults({ status => { code => 200, count => 1, match => { format => 'kafka', topic => 'rp2' },
	body => { offsets => [ { partition => 0, offset => 7 }, { partition => 1, offset => -1, error_code => 50003 } ] } } });
$node->safe_psql('postgres', qq{
	SELECT courier.create_outbox('rp2', '$url', 'kafka_rest_v2', '{"topic": "rp2", "retry_base_ms": 20, "retry_max_ms": 100}');
	SELECT courier.alter_outbox('rp2', enabled => false);
	SELECT courier.send('rp2', jsonb_build_object('n', i), 'same-key') FROM generate_series(1, 2) i;
	SELECT courier.alter_outbox('rp2', enabled => true);
});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'rp2') == 0 }, timeout => 60, what => 'rp2 drained'),
	'per-partition answer with an error: the request was retried');
is($sink->stats->{faults_injected}{status}, 1, 'the ambiguous answer was given once');
is($sink->stats->{unique}, 2, 'both events arrived: none was taken as written by the ambiguous answer');
is($sink->stats->{order_violations}, 0, 'in order');
is($node->safe_psql('postgres', "SELECT failed_attempts > 0 FROM courier.outbox_stats WHERE outbox = 'rp2'::regclass"), 't',
	'the answer counted as a failed attempt');

is($sink->stats->{internal_errors}, 0, 'the sink had no internal errors');
$sink->stop;
$node->stop;
done_testing();
