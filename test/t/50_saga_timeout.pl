# Saga step timeouts are enforced by the database worker: a running step past its deadline is
# failed with {"reason": "timeout"} and compensation begins; a saga whose row is locked by a
# session driving it is skipped (SKIP LOCKED), never waited for, and timed out once released.
use strict;
use warnings;

use CourierTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = CourierTest::node('saga_timeout', conf => ["courier.saga_timeout_interval = '100ms'"]);
my $id1 = '00000000-0000-0000-0000-000000000001';
my $id2 = '00000000-0000-0000-0000-000000000002';

$node->safe_psql('postgres', q{
	SELECT courier.saga_define('order', '[
		{"name": "create_order", "compensation": "cancel_order"},
		{"name": "reserve_inventory", "compensation": "release_inventory", "timeout": "1 s"},
		{"name": "charge_payment"}]');
});
for my $id ($id1, $id2)
{
	$node->safe_psql('postgres', qq{
		SELECT courier.saga_start('order', '{}', '$id');
		SELECT courier.saga_step_started('$id', 'create_order');
		SELECT courier.saga_step_succeeded('$id', 'create_order');
	});
}

# saga 2 is held by a session that is driving it (a repeated start: a no-op that locks the row)
my ($in, $out, $err) = ('', '', '');
my $held = IPC::Run::start(['psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres')],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN;\nSELECT status FROM courier.saga_step_started('$id2', 'reserve_inventory');\n";
ok(CourierTest::wait_until(sub { $held->pump_nb; $out =~ /running/ }, timeout => 60,
	what => 'session holding saga 2'), 'a session holds saga 2');

# both steps started before saga 2 was taken; only saga 1 can be timed out now
$node->safe_psql('postgres', "SELECT courier.saga_step_started('$id1', 'reserve_inventory')");
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', "SELECT status FROM courier.sagas WHERE saga_id = '$id1'") eq 'compensating'
}, timeout => 60, what => 'saga 1 timed out'), 'the worker timed out the running step of saga 1');

is($node->safe_psql('postgres', "SELECT errors -> 'reserve_inventory' ->> 'reason' FROM courier.sagas WHERE saga_id = '$id1'"),
	'timeout', 'the step failed with reason timeout');
is($node->safe_psql('postgres', "SELECT action || ' ' || step FROM courier.saga_next('$id1')"),
	'compensate create_order', 'compensation of the succeeded step begins');
is($node->safe_psql('postgres', "SELECT status || ' ' || current_step FROM courier.sagas WHERE saga_id = '$id2'"),
	'running reserve_inventory', 'the locked saga was skipped, not waited for');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'pg_courier worker' AND wait_event_type = 'Lock'}), '0', 'the worker is not waiting on a lock');

# released: the next sweep times it out
$in .= "COMMIT;\n\\q\n";
$held->finish;
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', "SELECT status FROM courier.sagas WHERE saga_id = '$id2'") eq 'compensating'
}, timeout => 60, what => 'saga 2 timed out'), 'saga 2 is timed out once released');

# the compensation runs to the end; nothing is left with a deadline
$node->safe_psql('postgres', "SELECT courier.saga_compensated(id, 'create_order') FROM (VALUES ('$id1'::uuid), ('$id2')) v(id)");
is($node->safe_psql('postgres', "SELECT string_agg(status, ',') FROM courier.sagas"), 'compensated,compensated', 'both compensated');
is($node->safe_psql('postgres', "SELECT count(*) FROM courier.saga_instances WHERE deadline IS NOT NULL"), '0', 'no deadline left');
unlike(slurp_file($node->logfile), qr/could not time out/, 'no sweep errors in the log');

$node->stop;
done_testing();
