# The worker's life: it waits quietly for CREATE EXTENSION, survives DROP/CREATE, comes back after
# pg_terminate_backend, serves several databases, and a server restart in the middle of delivery
# loses nothing.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $url = $sink->url('/hook');
my $node = CourierTest::node('lifecycle', create => 0, databases => 'postgres, second');

# Waiting for the extension: the worker runs, idle, and logs no errors.
ok(CourierTest::wait_until(sub { CourierTest::worker_pid($node) ne '' }, timeout => 30, what => 'worker'),
	'the worker runs before CREATE EXTENSION');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_courier');
is($node->safe_psql('postgres', "SELECT state FROM courier.worker_status() WHERE database = 'postgres'") =~ /waiting|idle|delivering/ ? 1 : 0,
	1, 'worker_status shows the worker');

$node->safe_psql('postgres', qq{SELECT courier.create_outbox('ob', '$url')});
$node->safe_psql('postgres', q{SELECT courier.send('ob', '{"step": "after create"}', 'a')});
ok($sink->wait_for(sub { $sink->stats->{unique} == 1 }, timeout => 30, what => 'first event'),
	'an event sent right after CREATE EXTENSION is delivered');

# DROP EXTENSION ... CASCADE (the outbox table stays, its trigger goes) and CREATE again.
$node->safe_psql('postgres', 'DROP EXTENSION pg_courier CASCADE');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_courier');
$node->safe_psql('postgres', qq{SELECT courier.create_outbox('ob2', '$url')});
$node->safe_psql('postgres', q{SELECT courier.send('ob2', '{"step": "after re-create"}', 'a')});
ok($sink->wait_for(sub { $sink->stats->{unique} == 2 }, timeout => 30, what => 'event after re-create'),
	'delivery resumes after DROP/CREATE EXTENSION');

# pg_terminate_backend: the launcher starts a new worker, which carries on.
my $pid = CourierTest::worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok(CourierTest::wait_until(sub { my $p = CourierTest::worker_pid($node); $p ne '' && $p ne $pid },
		timeout => 60, what => 'new worker'), 'a terminated worker is replaced');
$node->safe_psql('postgres', q{SELECT courier.send('ob2', '{"step": "after terminate"}', 'a')});
ok($sink->wait_for(sub { $sink->stats->{unique} == 3 }, timeout => 30, what => 'event after terminate'),
	'delivery resumes after pg_terminate_backend');

# A second database has its own worker.
$node->safe_psql('postgres', 'CREATE DATABASE second');
$node->safe_psql('second', 'CREATE EXTENSION pg_courier');
$node->safe_psql('second', qq{SELECT courier.create_outbox('ob', '$url')});
$node->safe_psql('second', q{SELECT courier.send('ob', '{"step": "second db"}', 'a')});
ok($sink->wait_for(sub { $sink->stats->{unique} == 4 }, timeout => 90, what => 'event in the second database'),
	'the second database in courier.databases is served');

# Restart in the middle of delivery: 20,000 events, the endpoint slowed so that delivery is under
# way when the server stops; afterwards every committed event id has arrived.
$sink->reset;
$sink->config(record_data => JSON::PP::false);
$node->safe_psql('postgres', q{CREATE TABLE sent (event_id uuid PRIMARY KEY)});
$sink->faults({ delay_ms => { ms => 20, rate => 1 } });
$node->safe_psql('postgres', q{
	INSERT INTO sent SELECT courier.send('ob2', jsonb_build_object('i', i), 'k' || (i % 100))
	  FROM generate_series(1, 20000) i});
ok($sink->wait_for(sub { $sink->stats->{accepted} > 0 }, timeout => 30, what => 'delivery under way'),
	'delivery is under way');
$node->restart(mode => 'immediate');
$sink->clear_faults;
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'ob2') == 0 }, timeout => 180, what => 'drained after restart'),
	'the outbox drains after an immediate restart');
my %got = map { $_ => 1 } @{ $sink->ids };
my @missing = grep { !$got{$_} } split /\n/, $node->safe_psql('postgres', 'SELECT event_id FROM sent');
is(scalar(@missing), 0, 'no event lost across the restart (20,000 sent)');
my $dups = $sink->stats->{duplicates};
cmp_ok($dups, "<=", 32, "duplicates only from the requests in flight ($dups; max_inflight 32, one event each)");

$node->stop;
$sink->stop;
done_testing();
