# Code that a table owner attaches to an outbox (triggers, defaults, constraints) never runs with
# the worker's or the extension's superuser rights: not when the worker deletes delivered rows or
# records failures, not when a saga writes its commands.  And one role cannot see another's
# outbox counters or endpoints.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('security', conf => [ "courier.saga_timeout_interval = '200ms'" ]);
my $url = $sink->url('/hook');

$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE SCHEMA alice AUTHORIZATION alice;
});
$node->safe_psql('postgres', qq{
	SET ROLE alice;
	CREATE TABLE alice.audit (what text, who name, superuser boolean);
	SELECT courier.create_outbox('alice.events', '$url');
	-- a trigger that records who it runs as, for every way the worker touches the table
	CREATE FUNCTION alice.spy() RETURNS trigger LANGUAGE plpgsql AS \$\$
	BEGIN
		INSERT INTO alice.audit VALUES (TG_OP, current_user,
			(SELECT rolsuper FROM pg_roles WHERE rolname = current_user));
		RETURN NULL;
	END \$\$;
	CREATE TRIGGER spy AFTER INSERT OR UPDATE OR DELETE ON alice.events FOR EACH ROW EXECUTE FUNCTION alice.spy();
	SELECT courier.send('alice.events', '{"n": 1}', 'k');
});

ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'alice.events') == 0 }, timeout => 30, what => 'delivered'),
	'the event is delivered');
is($node->safe_psql('postgres', q{SELECT string_agg(what || ':' || who || ':' || superuser, ',' ORDER BY what) FROM alice.audit}),
	'DELETE:alice:false,INSERT:alice:false',
	'the worker deletes the delivered row as the table owner, not as a superuser');

# A failure (503) makes the worker UPDATE the row: also as the owner.
$sink->faults({ status => { code => 503, count => 1 } });
$node->safe_psql('postgres', q{TRUNCATE alice.audit; SET ROLE alice; SELECT courier.send('alice.events', '{"n": 2}', 'k')});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'alice.events') == 0 }, timeout => 30, what => 'delivered after retry'),
	'delivered after a retry');
is($node->safe_psql('postgres', q{SELECT count(*) FROM alice.audit WHERE what = 'UPDATE' AND who = 'alice' AND NOT superuser}),
	'1', 'the failure is recorded as the table owner');
is($node->safe_psql('postgres', q{SELECT count(*) FROM alice.audit WHERE superuser}), '0', 'nothing ran as a superuser');

# Sagas write their commands as the saga type's owner, also from the worker's timeout sweep.
$node->safe_psql('postgres', q{
	TRUNCATE alice.audit;
	SET ROLE alice;
	SELECT courier.saga_define('alice_flow', '[{"name": "charge", "timeout": "1 second"}, {"name": "ship"}]', 'alice.events');
	SELECT courier.saga_start('alice_flow', '{}', '00000000-0000-0000-0000-00000000000a');
});
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT who || ':' || superuser, ',') FROM alice.audit WHERE what = 'INSERT'}),
	'alice:false', 'a saga command is written as the saga type\'s owner');
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', q{SELECT status FROM courier.sagas WHERE saga_id = '00000000-0000-0000-0000-00000000000a'})
	  ne 'running' }, timeout => 30, what => 'timeout enforced'), 'the worker times the step out');
is($node->safe_psql('postgres', q{SELECT count(*) FROM alice.audit WHERE superuser}), '0',
	'commands written by the worker\'s timeout sweep did not run as a superuser either');

# Another role sees neither the registration, nor the counters, nor the endpoint hosts.
is($node->safe_psql('postgres', q{SET ROLE bob; SELECT count(*) FROM courier.outboxes}), '0', 'bob: no registrations');
is($node->safe_psql('postgres', q{SET ROLE bob; SELECT count(*) FROM courier._worker_counters()}), '0', 'bob: no counters');
my ($rc, $out, $err) = $node->psql('postgres', q{SET ROLE bob; SELECT * FROM courier.breakers()});
like($err, qr/permission denied/, 'bob: the list of all endpoints is for monitoring roles');
is($node->safe_psql('postgres', q{SET ROLE alice; SELECT count(*) FROM courier._worker_counters()}), '1', 'alice: her counters');
unlike($node->safe_psql('postgres', q{SELECT obj_description('alice.events'::regclass)}), qr/127\.0\.0\.1/,
	'the table comment does not show the endpoint');

$node->stop;
$sink->stop;
done_testing();
