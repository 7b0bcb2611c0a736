# Every request the worker sends must pass the official CloudEvents SDK (npm "cloudevents":
# HTTP.toEvent, then validate() on each event), judged over the raw requests the sink recorded:
# outboxes whose names need percent-encoding in the default source, odd options, empty and NULL
# keys, times RFC 3339 cannot write, and batches holding events that cannot be sent.
use strict;
use warnings;
use utf8;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('ce_sdk', conf => ["courier.poll_interval = '100ms'"]);
$sink->config(record_raw => JSON::PP::true);
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200';

# Options the SDK would refuse are refused when stored, with our words.
my ($ret, $out, $err) = $node->psql('postgres',
	qq{SELECT courier.create_outbox('bad_src', '${\ $sink->url('/x') }', 'cloudevents', '{"source": "my events"}')});
like($err, qr/outbox option "source" must be a non-empty URI-reference/, 'a source with a space is refused');
($ret, $out, $err) = $node->psql('postgres',
	qq{SELECT courier.create_outbox('bad_src', '${\ $sink->url('/x') }', 'cloudevents', '{"source": ""}')});
like($err, qr/outbox option "source" must be a non-empty URI-reference/, 'an empty source is refused');
($ret, $out, $err) = $node->psql('postgres',
	qq{SELECT courier.create_outbox('bad_topic', '${\ $sink->url('/x') }', 'cloudevents', '{"topic": ""}')});
like($err, qr/outbox option "topic" must not be empty/, 'an empty topic option is refused');
($ret, $out, $err) = $node->psql('postgres',
	qq{SELECT courier.create_outbox('bad_hdr', '${\ $sink->url('/x') }', 'cloudevents', '{"headers": {"ce-type": "x"}}')});
like($err, qr/cannot set CloudEvents \(ce-\*\)/, 'a ce-* header option is refused');

# Outboxes: names with a space and non-ASCII letters (default source), a batched one with an odd
# but valid source, one with a default topic.
my @outboxes = (
	[ '"my events"', '{' . $fast . '}' ],
	[ '"заказы"', '{' . $fast . ', "batch": true}' ],
	[ '"odd%name#1"', '{' . $fast . ', "batch": true, "source": "urn:example:orders%20eu?x=1#frag"}' ],
	[ 'plain', '{' . $fast . ', "topic": "com.example.default"}' ],
);
my $i = 0;
for my $o (@outboxes)
{
	my ($name, $opts) = @$o;
	$i++;
	$node->safe_psql('postgres', qq{SELECT courier.create_outbox('$name', '${\ $sink->url("/hook/$i") }', 'cloudevents', '$opts')});
}

# An empty topic is refused at INSERT.
($ret, $out, $err) = $node->psql('postgres', q{INSERT INTO plain (topic, payload) VALUES ('', '{}')});
like($err, qr/event topic must not be empty/, 'an empty topic is refused at INSERT');

# Events: keys NULL, empty and ordinary; times in year 10000 and infinity; in the batched outboxes
# a row whose topic became empty after the INSERT (the worker dead-letters it alone).
my $expect_dead = 0;
for my $o (@outboxes)
{
	my ($name) = @$o;
	$node->safe_psql('postgres', qq{
		BEGIN;
		INSERT INTO $name (topic, key, payload)
		  SELECT CASE WHEN '$name' = 'plain' AND i % 2 = 0 THEN NULL ELSE 'com.example.t' || (i % 3) END,
		         CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'k' || (i % 5) END,
		         jsonb_build_object('n', i)
		    FROM generate_series(1, 30) i;
		UPDATE $name SET created_at = '10000-01-01' WHERE id IN (SELECT min(id) FROM $name);
		UPDATE $name SET created_at = 'infinity' WHERE id IN (SELECT max(id) FROM $name);
		UPDATE $name SET topic = '' WHERE id IN (SELECT min(id) + 5 FROM $name) AND '$name' ~ '(заказы|odd)';
		COMMIT});
	$expect_dead++ if $name =~ /заказы|odd/;
}

ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', q{SELECT (SELECT count(*) FROM "my events") + (SELECT count(*) FROM "заказы")
	                                 + (SELECT count(*) FROM "odd%name#1") + (SELECT count(*) FROM plain)}) == 0
}, timeout => 60, what => 'every outbox drained'), 'every outbox drained');
is($node->safe_psql('postgres', 'SELECT count(*) FROM courier.dead_letters'), $expect_dead,
	'only the rows with an empty topic went to the dead letters');
like($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT last_error, ',') FROM courier.dead_letters}),
	qr/topic is empty/, 'their reason names the topic');
is($sink->stats->{unique}, 4 * 30 - $expect_dead, 'every other event arrived');

my $verdict = $sink->judge('cloudevents');
cmp_ok($verdict->{requests}, '>', 0, 'the sink recorded the raw requests');
is($verdict->{events}, 4 * 30 - $expect_dead, "the SDK read every delivered event");
is(scalar @{ $verdict->{failures} }, 0, 'every request passes the CloudEvents SDK')
  or diag explain [ @{ $verdict->{failures} }[0 .. 2] ];
my %sources = map { $_->{body} =~ /"source":"([^"]*)"/ ? ($1 => 1) : () } @{ $sink->raw };
ok($sources{'/pg_courier/postgres/public.my%20events'}, 'the default source percent-encodes a space')
  or diag explain [ keys %sources ];
ok((grep { m{^/pg_courier/postgres/public\.(%[0-9A-F]{2})+$} } keys %sources),
	'the default source percent-encodes non-ASCII letters');
ok($sources{'urn:example:orders%20eu?x=1#frag'}, 'a source option is sent as given');
ok(!(grep { $_->{body} =~ /"subject":""/ || $_->{body} =~ /"type":""/ } @{ $sink->raw }),
	'no empty subject or type was sent');
ok(!(grep { $_->{body} =~ /"time":"(10000|infinity)/ } @{ $sink->raw }), 'no time outside RFC 3339 was sent');

done_testing();
