# Retry-After holds the origin: after a 503 with Retry-After: 3, nothing reaches the server (any
# outbox, any path) before 3 s have passed since that answer, judged by the sink's own receipt
# times; such an answer is pacing, not a breaker failure.  Breakers are per endpoint: /bad failing
# does not stall /ok on the same host and port.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('pacing', conf => [
	"courier.poll_interval = '100ms'",
	"courier.breaker_failure_threshold = 3",
	"courier.breaker_reset_ms = 600000",
]);
$sink->config(record_raw => JSON::PP::true);
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200';
for my $ob (qw(a b))
{
	$node->safe_psql('postgres', qq{SELECT courier.create_outbox('$ob', '${\ $sink->url("/$ob") }', 'cloudevents', '{$fast}')});
}

# Retry-After on /a holds /b too (same origin).
$sink->faults({ status => { code => 503, retry_after => '3', count => 1, match => { path_prefix => '/a' } } });
$node->safe_psql('postgres', q{SELECT courier.send('a', '{"n": 1}', 'k', 'orders')});
my $answer;
ok($sink->wait_for(sub { ($answer) = grep { ($_->{status} // 0) == 503 } @{ $_[0]->raw }; $answer },
	timeout => 30, what => 'the 503'), 'the endpoint answered 503 with Retry-After: 3');
$node->safe_psql('postgres', q{SELECT courier.send('b', jsonb_build_object('n', i), 'k' || i, 'orders') FROM generate_series(1, 5) i});
$node->safe_psql('postgres', q{SELECT courier.send('a', jsonb_build_object('n', i), 'j' || i, 'orders') FROM generate_series(2, 5) i});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'a') + CourierTest::pending($node, 'b') == 0 },
	timeout => 60, what => 'both drained'), 'both outboxes drained after the hold');
my @after = grep { $_->{t} > $answer->{t} } @{ $sink->raw };
is(scalar(@after), 10, 'ten more requests: every event once');
my ($first) = sort { $a <=> $b } map { $_->{t} } @after;
cmp_ok($first - $answer->{t}, '>=', 3000, 'nothing reached the origin within 3 s of the Retry-After answer');
is($node->safe_psql('postgres', q{SELECT failures FROM courier.breakers() WHERE endpoint LIKE '%/a'}), '0',
	'the Retry-After answer is no breaker failure');

# Breakers per endpoint: /bad fails until its breaker opens; /ok on the same server still flows.
$sink->reset;
$sink->faults({ status => { code => 500, match => { path_prefix => '/bad' } } });
for my $ob (qw(bad ok))
{
	$node->safe_psql('postgres', qq{SELECT courier.create_outbox('$ob', '${\ $sink->url("/$ob") }', 'cloudevents', '{$fast}')});
}
$node->safe_psql('postgres', q{SELECT courier.send('bad', jsonb_build_object('n', i), 'k' || i, 'orders') FROM generate_series(1, 5) i});
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', q{SELECT state FROM courier.breakers() WHERE endpoint LIKE '%/bad'}) eq 'open'
}, timeout => 60, what => "/bad's breaker open"), "/bad's breaker opened");
is($node->safe_psql('postgres', q{SELECT breaker_state FROM courier.outbox_stats WHERE outbox = 'bad'::regclass}), 'open',
	'outbox_stats shows the endpoint breaker');
$node->safe_psql('postgres', q{SELECT courier.send('ok', jsonb_build_object('n', i), 'k' || i, 'orders') FROM generate_series(1, 5) i});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'ok') == 0 }, timeout => 60, what => '/ok drained'),
	'/ok is delivered while /bad\'s breaker is open (reset in 600 s)');
is($node->safe_psql('postgres', q{SELECT breaker_state FROM courier.outbox_stats WHERE outbox = 'ok'::regclass}), 'closed',
	"/ok's breaker is closed");

done_testing();
