# One saga whose timeout command cannot be written (a trigger of the outbox's owner raises on it)
# does not stop the worker's timeout sweep: the other sagas past their deadline time out, and the
# failing saga is reported once (one WARNING), not at every sweep.  Once the trigger is fixed, the
# next sweep times it out too.  More failing sagas than one sweep looks at (200) do not keep it
# from the sagas due after them either: it goes on past them.
use strict;
use warnings;

use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = CourierTest::node('saga_sweep', conf => ["courier.saga_timeout_interval = '100ms'"]);
my $bad = '00000000-0000-0000-0000-0000000000bb';
my @good = map { sprintf('00000000-0000-0000-0000-%012d', $_) } 1 .. 3;

$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE SCHEMA alice AUTHORIZATION alice;
	SET ROLE alice;
	SELECT courier.create_outbox('alice.cmds', 'http://127.0.0.1:9/never');
	SELECT courier.pause('alice.cmds');
	CREATE TABLE alice.refuse (saga text PRIMARY KEY);
	CREATE FUNCTION alice.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF EXISTS (SELECT 1 FROM alice.refuse WHERE saga = NEW.key) AND NEW.topic LIKE '%.compensate' THEN
			RAISE EXCEPTION 'alice refuses the command of saga %', NEW.key;
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse BEFORE INSERT ON alice.cmds FOR EACH ROW EXECUTE FUNCTION alice.refuse();
	SELECT courier.saga_define('order', '[
		{"name": "create_order", "compensation": "cancel_order"},
		{"name": "reserve_inventory", "compensation": "release_inventory", "timeout": "1 s"}]',
		'alice.cmds');
});
$node->safe_psql('postgres', "INSERT INTO alice.refuse VALUES ('$bad')");

my $log_start = -s $node->logfile;
# the failing saga first: its deadline comes first, so the sweep meets it before the others
for my $id ($bad, @good)
{
	$node->safe_psql('postgres', qq{
		SET ROLE alice;
		SELECT courier.saga_start('order', '{}', '$id');
		SELECT courier.saga_step_started('$id', 'create_order');
		SELECT courier.saga_step_succeeded('$id', 'create_order');
		SELECT courier.saga_step_started('$id', 'reserve_inventory');
	});
}

sub status
{
	my ($id) = @_;
	return $node->safe_psql('postgres', "SELECT status FROM courier.sagas WHERE saga_id = '$id'");
}

ok(CourierTest::wait_until(sub { !grep { status($_) ne 'compensating' } @good }, timeout => 60,
	what => 'the other sagas timed out'), 'the other sagas time out despite the failing one');
is(status($bad), 'running', 'the saga whose command is refused is still running');

# a later saga's 1 s timeout: when it fires, ten sweeps have met the failing saga again
my $probe = '00000000-0000-0000-0000-0000000000cc';
$node->safe_psql('postgres', qq{
	SET ROLE alice;
	SELECT courier.saga_start('order', '{}', '$probe');
	SELECT courier.saga_step_started('$probe', 'create_order');
	SELECT courier.saga_step_succeeded('$probe', 'create_order');
	SELECT courier.saga_step_started('$probe', 'reserve_inventory');
});
ok(CourierTest::wait_until(sub { status($probe) eq 'compensating' }, timeout => 60, what => 'the probe saga'),
	'a later saga times out too');
my $warnings_at = sub {
	my $log = slurp_file($node->logfile, $log_start);
	return scalar(() = $log =~ /WARNING:.*saga 00000000-0000-0000-0000-0000000000bb/g);
};
my $log = slurp_file($node->logfile, $log_start);
like($log, qr/alice refuses the command of saga 00000000-0000-0000-0000-0000000000bb/, "the failure is reported with the owner's message");
is($warnings_at->(), 1, 'the failing saga is reported once, not at every sweep');

# fixed: it times out at the next sweep
$node->safe_psql('postgres', 'DELETE FROM alice.refuse');
ok(CourierTest::wait_until(sub { status($bad) eq 'compensating' }, timeout => 60, what => 'the fixed saga'),
	'once the trigger lets it through, the saga times out');

# more failing sagas than a sweep batch, due before two good ones
$log_start = -s $node->logfile;
$node->safe_psql('postgres', q{
	INSERT INTO alice.refuse SELECT pg_catalog.format('00000000-0000-0000-0001-%s', pg_catalog.lpad(g::text, 12, '0'))
	  FROM pg_catalog.generate_series(1, 250) g;
	SET ROLE alice;
	DO $$
	DECLARE id uuid;
	BEGIN
		FOR g IN 1 .. 250 LOOP
			id := pg_catalog.format('00000000-0000-0000-0001-%s', pg_catalog.lpad(g::text, 12, '0'));
			PERFORM courier.saga_start('order', '{}', id);
			PERFORM courier.saga_step_started(id, 'create_order');
			PERFORM courier.saga_step_succeeded(id, 'create_order');
			PERFORM courier.saga_step_started(id, 'reserve_inventory');
		END LOOP;
	END $$;
});
my @later = map { sprintf('00000000-0000-0000-0002-%012d', $_) } 1 .. 2;
for my $id (@later)
{
	$node->safe_psql('postgres', qq{
		SET ROLE alice;
		SELECT courier.saga_start('order', '{}', '$id');
		SELECT courier.saga_step_started('$id', 'create_order');
		SELECT courier.saga_step_succeeded('$id', 'create_order');
		SELECT courier.saga_step_started('$id', 'reserve_inventory');
	});
}
ok(CourierTest::wait_until(sub { !grep { status($_) ne 'compensating' } @later }, timeout => 60,
	what => 'the sagas behind 250 failing ones'), 'sagas due after 250 failing ones time out');
is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.sagas
	WHERE saga_id::text LIKE '00000000-0000-0000-0001-%' AND status = 'running'}), '250', 'the failing ones still run');
# a probe again: once it timed out, every failing saga was met by several sweeps
$probe = '00000000-0000-0000-0000-0000000000cd';
$node->safe_psql('postgres', qq{
	SET ROLE alice;
	SELECT courier.saga_start('order', '{}', '$probe');
	SELECT courier.saga_step_started('$probe', 'create_order');
	SELECT courier.saga_step_succeeded('$probe', 'create_order');
	SELECT courier.saga_step_started('$probe', 'reserve_inventory');
});
ok(CourierTest::wait_until(sub { status($probe) eq 'compensating' }, timeout => 60, what => 'the second probe'),
	'the second probe times out');
my %seen;
$log = slurp_file($node->logfile, $log_start);
$seen{$1}++ while $log =~ /WARNING:.*saga (00000000-0000-0000-0001-\d+)/g;
is(scalar(keys %seen), 250, 'each failing saga is reported');
is(scalar(grep { $_ != 1 } values %seen), 0, 'each exactly once');

unlike(slurp_file($node->logfile), qr/FATAL|PANIC/, 'no worker crash');

$node->stop;
done_testing();
