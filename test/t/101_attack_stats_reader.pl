# Attack: reading the stats runs the outbox owner's code in the reader's identity.  eve's outbox
# has FORCE ROW LEVEL SECURITY with a policy whose function escalates when a superuser runs it and
# records whoever runs it; she also tries to register a view (whose function does the same) as an
# outbox.  A superuser reads the README's query (SELECT * FROM courier.outbox_stats) and
# courier.metrics(); a monitoring role that is a member of eve (so it sees her outbox) reads them too.
# eve stays non-superuser, her code never runs as anyone but her, and the pending counts are right
# where they can be given without running her code.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierTest;

my $node = CourierTest::node('attack_stats_reader');

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	CREATE ROLE mon LOGIN;
	GRANT eve TO mon;
	CREATE SCHEMA eve AUTHORIZATION eve;
});
$node->safe_psql('postgres', q{
	SET ROLE eve;
	CREATE TABLE eve.seen (who name, su boolean, via text);
	GRANT INSERT ON eve.seen TO PUBLIC;
	CREATE FUNCTION eve.trap(via text) RETURNS boolean LANGUAGE plpgsql AS $f$
	DECLARE su boolean := (SELECT r.rolsuper FROM pg_catalog.pg_roles r
	                        WHERE r.rolname OPERATOR(pg_catalog.=) current_user);
	BEGIN
		INSERT INTO eve.seen VALUES (current_user, su, via);
		IF su THEN EXECUTE 'ALTER ROLE eve SUPERUSER'; END IF;
		RETURN true;
	END $f$;
	-- pending rows stay: the outbox is paused
	SELECT courier.create_outbox('eve.o', 'http://127.0.0.1:9/eve');
	SELECT courier.pause('eve.o');
	SELECT courier.send('eve.o', '{"n": 1}');
	SELECT courier.send('eve.o', '{"n": 2}');
	SELECT courier.send('eve.o', '{"n": 3}');
	ALTER TABLE eve.o ENABLE ROW LEVEL SECURITY;
	ALTER TABLE eve.o FORCE ROW LEVEL SECURITY;
	CREATE POLICY trap ON eve.o USING (eve.trap('policy'));
	CREATE VIEW eve.v AS SELECT 1 AS id, now() AS created_at WHERE eve.trap('view');
});
# a registration of the view, as the issue found possible (refused once registration checks the relation)
my ($rc, $out, $err) = $node->psql('postgres', q{
	SET ROLE eve;
	INSERT INTO courier.outboxes (outbox, endpoint, format, owner)
	VALUES ('eve.v', 'http://127.0.0.1:9/v', 'cloudevents', 'eve');
});
note("registering a view: rc $rc $err");

# a superuser reads the stats and the metrics
my $stats = $node->safe_psql('postgres', q{SELECT outbox || ':' || COALESCE(pending::text, 'null') FROM courier.outbox_stats ORDER BY 1});
like($stats, qr/^eve\.o:3$/m, 'superuser: eve.o shows 3 pending (counted without running her policy)');
if ($rc == 0)
{
	like($stats, qr/^eve\.v:null$/m, 'superuser: the registered view is not counted');
}
like($node->safe_psql('postgres', 'SELECT courier.metrics()'),
	qr/^courier_outbox_pending\{database="postgres",outbox="eve\.o"\} 3$/m, 'superuser: metrics show 3 pending');

# a member of eve (not superuser, not the owner): her policy would run as mon, so no count
is($node->safe_psql('postgres', q{SET ROLE mon; SELECT COALESCE(pending::text, 'null') FROM courier.outbox_stats WHERE outbox = 'eve.o'::regclass}),
	'null', 'mon: the count would run eve\'s policy as mon, so it is not given');
like($node->safe_psql('postgres', q{SET ROLE mon; SELECT courier.metrics()}),
	qr/^courier_outbox_pending\{database="postgres",outbox="eve\.o"\} 0$/m, 'mon: metrics run nothing of eve\'s either');

# (the worker reads eve's relations as eve: those runs are hers)
is($node->safe_psql('postgres', q{SELECT count(*) FROM eve.seen WHERE who <> 'eve' OR su}), '0',
	'eve\'s policy and view never ran as a reader');
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'eve'}), 'f', 'eve is not superuser');

# eve reading her own stats runs her own policy, as herself
is($node->safe_psql('postgres', q{SET ROLE eve; SELECT pending FROM courier.outbox_stats WHERE outbox = 'eve.o'::regclass}),
	'3', 'eve: her own outbox, counted through her own policy');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eve.seen WHERE who <> 'eve' OR su}), '0', 'and only as eve');

# without row-level security, another reader who may SELECT gets the count by a plain scan
$node->safe_psql('postgres', q{SET ROLE eve; ALTER TABLE eve.o NO FORCE ROW LEVEL SECURITY; ALTER TABLE eve.o DISABLE ROW LEVEL SECURITY});
is($node->safe_psql('postgres', q{SET ROLE mon; SELECT pending FROM courier.outbox_stats WHERE outbox = 'eve.o'::regclass}),
	'3', 'mon: counted when no policy applies');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eve.seen WHERE who <> 'eve' OR su}), '0', 'still nothing of eve\'s ran as another role');

# a relation that is not registered is not counted at all
$node->safe_psql('postgres', q{SET ROLE eve; CREATE TABLE eve.plain (created_at timestamptz); INSERT INTO eve.plain VALUES (now())});
is($node->safe_psql('postgres', q{SELECT COALESCE(pending::text, 'null') FROM courier._outbox_pending('eve.plain')}),
	'null', 'an unregistered table is not counted');

unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');
$node->stop;
done_testing();
