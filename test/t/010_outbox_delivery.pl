# Delivery end to end: real cluster, real worker, real HTTP to the sink.
# - N events from concurrent producers arrive, each exactly once (no faults)
# - CloudEvents requests carry the contract (content type, attributes, Idempotency-Key, custom headers)
# - Kafka REST batches carry many records and per-key order holds
# - rolled-back transactions publish nothing
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
$sink->config(record_data => JSON::PP::true, order_field => 'n');
my $node = CourierTest::node('delivery');
my $ce_url = $sink->url('/hooks/orders');
my $kafka_url = $sink->url('/kafka');

$node->safe_psql('postgres', qq{
	CREATE TABLE orders (id bigserial PRIMARY KEY, customer int, event_id uuid, kafka_event_id uuid);
	SELECT courier.create_outbox('ce_outbox', '$ce_url');
	SELECT courier.create_outbox('kafka_outbox', '$kafka_url', 'kafka_rest_v2', '{"topic": "orders"}');
	CREATE SEQUENCE per_customer_n;
});

# Business transactions from concurrent producers: an order row plus one event per outbox, in one
# transaction.  n is a per-key counter taken under the customer's row lock, so it follows id order
# for each key even with concurrent producers.
$node->safe_psql('postgres', q{
	CREATE TABLE customers (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
	INSERT INTO customers SELECT g FROM generate_series(1, 50) g;
	CREATE FUNCTION place_order(c int) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE n int;
	BEGIN
		UPDATE customers SET n = customers.n + 1 WHERE id = c RETURNING customers.n INTO n;
		INSERT INTO orders (customer, event_id, kafka_event_id)
		VALUES (c,
		        courier.send('ce_outbox', jsonb_build_object('customer', c, 'n', n), 'customer-' || c, 'order.created',
		                     '{"X-Tenant": "acme", "Bad Header": "x", "X-Evil": "a\r\nInjected: yes"}'),
		        courier.send('kafka_outbox', jsonb_build_object('customer', c, 'n', n), 'kafka-customer-' || c));
	END $$;
});
my $script = PostgreSQL::Test::Utils::tempdir() . '/producer.sql';
open my $fh, '>', $script or die;
print $fh "\\set c random(1, 50)\nSELECT place_order(:c);\n";
close $fh;
command_ok([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '250', '-f', $script,
	'-h', $node->host, '-p', $node->port, 'postgres' ], 'concurrent producers commit 1000 business transactions');

my $total = $node->safe_psql('postgres', 'SELECT count(*) FROM orders');
is($total, 1000, '1000 orders committed');

ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'ce_outbox') == 0
			&& CourierTest::pending($node, 'kafka_outbox') == 0 }, timeout => 120, what => 'outboxes drained'),
	'both outboxes drained');

my $stats = $sink->stats;
is($stats->{duplicates}, 0, 'no duplicates without faults');
is($stats->{unique}, 2000, 'every event arrived: 1000 CloudEvents + 1000 Kafka records');
is($stats->{order_violations}, 0, 'per-key order held')
  or diag explain $stats->{violation_examples};

my %received = map { $_ => 1 } @{ $sink->ids };
my @expected = split /\n/, $node->safe_psql('postgres',
	'SELECT event_id FROM orders UNION ALL SELECT kafka_event_id FROM orders');
is(scalar(grep { !$received{$_} } @expected), 0, 'every committed event id was received');

# Kafka REST: records are batched.
my $kafka_requests = $node->safe_psql('postgres',
	q{SELECT requests FROM courier.outbox_stats WHERE outbox = 'kafka_outbox'::regclass});
cmp_ok($kafka_requests, '<', 1000, "1000 Kafka records took fewer requests ($kafka_requests)");
cmp_ok(1000 / $kafka_requests, '>=', 5, 'on average at least 5 records per Kafka request');

# Rolled back: nothing published.  A committed marker afterwards proves the worker went past it;
# the marker also shows the CloudEvents contract as the receiver saw it.
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT courier.send('ce_outbox', '{"tag": "rolled-back"}', 'rb');
	ROLLBACK;
	SELECT courier.send('ce_outbox', '{"tag": "marker"}', 'rb', 'order.marked',
	                    '{"X-Tenant": "acme", "Bad Header": "x", "X-Evil": "a\r\nInjected: yes"}');
});
ok($sink->wait_for(sub {
	grep { ($_->{data}{tag} // '') eq 'marker' } @{ $sink->events(from => 1) } }, timeout => 30, what => 'marker'),
	'marker after the rollback arrived');
is(scalar(grep { ($_->{data}{tag} // '') eq 'rolled-back' } @{ $sink->events(from => 1) }), 0,
	'the rolled-back event was never published');

my ($marker) = grep { ($_->{data}{tag} // '') eq 'marker' } @{ $sink->events(from => 1) };
is($marker->{topic}, 'order.marked', 'CloudEvents type is the topic');
is($marker->{key}, 'rb', 'CloudEvents subject is the key');
my ($req) = grep { $_->{url} eq '/hooks/orders' } reverse @{ $sink->requests };
my %h = %{ $req->{headers} };
like($h{'content-type'}, qr{^application/cloudevents\+json}, 'structured-mode content type');
is($h{'idempotency-key'}, qq{"$marker->{id}"}, 'Idempotency-Key is the quoted event id');
is($h{'x-tenant'}, 'acme', 'custom headers travel');
ok(!exists $h{'bad header'} && !exists $h{'injected'} && !exists $h{'x-evil'},
	'invalid header names and values with CR/LF are dropped');

# stats view: once the acknowledgement is recorded, nothing is pending
my $stats_sql = q{SELECT pending, delivered >= 1001, failed_attempts, last_error IS NULL
                  FROM courier.outbox_stats WHERE outbox = 'ce_outbox'::regclass};
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', $stats_sql) eq '0|t|0|t' },
		timeout => 30, what => 'stats settled'),
	'outbox_stats: nothing pending, deliveries counted, no failures')
  or diag $node->safe_psql('postgres', $stats_sql);

# retention: delivered events are kept (not just deleted) and can be replayed
$node->safe_psql('postgres', qq{SELECT courier.create_outbox('kept', '$ce_url', 'cloudevents', '{"retention": "1 day"}')});
my $kept_id = $node->safe_psql('postgres', q{SELECT courier.send('kept', '{"tag": "kept"}', 'kept-key')});
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM courier.delivered_events') == 1 },
	timeout => 30, what => 'retained'), 'retention: the delivered event is kept in courier.delivered_events');
is(CourierTest::pending($node, 'kept'), 0, 'retention: and no longer pending');
is($node->safe_psql('postgres', "SELECT courier.replay_delivered('kept', ARRAY['$kept_id'::uuid])"), 1, 'retention: replay');
ok($sink->wait_for(sub { $sink->count($kept_id) == 2 }, timeout => 30, what => 'replayed'),
	'retention: the replayed event is delivered again, with the same event id');

$node->stop;
$sink->stop;
done_testing();
