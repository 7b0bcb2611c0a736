# Attack: register something that is not an outbox.  eve (CREATE on her own schema only) tries to
# register her view, materialized view, partitioned table, table with a rule, domain-typed table,
# typed table, inheritance child and temporary table, directly in courier.outboxes and through
# create_outbox / adopt_outbox; then turns a registered outbox into a view and puts row-level
# security on another.  A superuser reading courier.outbox_stats, metrics() and worker_status()
# must never run her code; no role becomes superuser; other roles' events are still delivered.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('attack_registration');
my $url = $sink->url('/hook');

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	CREATE ROLE alice LOGIN;
	CREATE SCHEMA eve AUTHORIZATION eve;
	CREATE SCHEMA alice AUTHORIZATION alice;
	GRANT USAGE ON SCHEMA alice TO PUBLIC;
});
$node->safe_psql('postgres', qq{
	SET ROLE alice;
	SELECT courier.create_outbox('alice.events', '$url');
	CREATE TABLE alice.spare (LIKE alice.events INCLUDING ALL);
});

# eve's code: records who runs it, and makes eve a superuser when a superuser runs it.
$node->safe_psql('postgres', qq{
	SET ROLE eve;
	CREATE TABLE eve.audit (who name, su boolean);
	GRANT INSERT ON eve.audit TO PUBLIC;
	CREATE FUNCTION eve.spy() RETURNS boolean LANGUAGE plpgsql AS \$f\$
	BEGIN
		INSERT INTO eve.audit SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;
		IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
			EXECUTE 'ALTER ROLE eve SUPERUSER';
		END IF;
		RETURN true;
	END \$f\$;
	SELECT courier.create_outbox('eve.genuine', '$url');
	CREATE VIEW eve.v AS SELECT * FROM eve.genuine WHERE eve.spy();
	CREATE MATERIALIZED VIEW eve.mv AS SELECT * FROM eve.genuine WHERE eve.spy();
	CREATE TABLE eve.parted (LIKE eve.genuine) PARTITION BY RANGE (id);
	CREATE TABLE eve.part1 PARTITION OF eve.parted FOR VALUES FROM (0) TO (1000000);
	CREATE TABLE eve.ruled (LIKE eve.genuine INCLUDING ALL);
	CREATE RULE spy AS ON DELETE TO eve.ruled DO ALSO SELECT eve.spy();
	CREATE DOMAIN eve.json AS jsonb CHECK (eve.spy());
	CREATE TABLE eve.domained (LIKE eve.genuine INCLUDING ALL);
	ALTER TABLE eve.domained ALTER COLUMN payload TYPE eve.json;
	CREATE TYPE eve.row AS (id bigint, event_id uuid, topic text, key text, payload jsonb, headers jsonb,
	                        created_at timestamptz, attempts integer, next_attempt_at timestamptz,
	                        first_failed_at timestamptz, last_status integer, last_error text);
	CREATE TABLE eve.typed OF eve.row (PRIMARY KEY (id));
	CREATE TABLE eve.parent (LIKE eve.genuine INCLUDING ALL);
	CREATE TABLE eve.child () INHERITS (eve.parent);
});

my @hostile = qw(eve.v eve.mv eve.parted eve.part1 eve.ruled eve.domained eve.typed eve.parent eve.child);
for my $rel (@hostile)
{
	my ($rc, $out, $err) = $node->psql('postgres', qq{
		SET ROLE eve;
		INSERT INTO courier.outboxes (outbox, endpoint, format, owner) VALUES ('$rel', '$url', 'cloudevents', 'eve')});
	like($err, qr/relation \Q$rel\E cannot be a pg_courier outbox: /, "$rel: a direct INSERT into courier.outboxes is refused");
	($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE eve; SELECT courier.adopt_outbox('$rel', '$url')});
	like($err, qr/relation \Q$rel\E cannot be a pg_courier outbox: /, "$rel: adopt_outbox refuses it");
	($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE eve; SELECT courier.create_outbox('$rel', '$url')});
	like($err, qr/already exists/, "$rel: create_outbox does not take it over");
}
my ($rc, $out, $err) = $node->psql('postgres', qq{
	SET ROLE eve;
	CREATE TEMP TABLE tmp (LIKE eve.genuine INCLUDING ALL);
	INSERT INTO courier.outboxes (outbox, endpoint, format, owner) VALUES ('tmp', '$url', 'cloudevents', 'eve')});
like($err, qr/cannot be a pg_courier outbox: it is a temporary table/, 'a temporary table is refused');
($rc, $out, $err) = $node->psql('postgres', qq{
	SET ROLE eve;
	INSERT INTO courier.outboxes (outbox, endpoint, format, owner) VALUES ('alice.spare', '$url', 'cloudevents', 'eve')});
like($err, qr/row-level security/, "eve cannot register alice's table");
($rc, $out, $err) = $node->psql('postgres', qq{
	SET ROLE eve;
	INSERT INTO courier.outboxes (outbox, endpoint, format, owner) VALUES ('alice.spare', '$url', 'cloudevents', 'alice')});
like($err, qr/row-level security/, "not even in alice's name");
($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE eve; SELECT courier.adopt_outbox('alice.spare', '$url')});
like($err, qr/must be owner of table alice\.spare/, "eve cannot adopt alice's table");
is($node->safe_psql('postgres', q{SELECT string_agg(outbox::text, ',' ORDER BY outbox::text) FROM courier.outboxes}),
	'alice.events,eve.genuine', 'only the two real outboxes are registered');

# After registration: a registered outbox turned into a view (PostgreSQL 15 still converts an empty
# table without triggers or indexes), and one with row-level security calling eve's code.
$node->safe_psql('postgres', qq{
	SET ROLE eve;
	SELECT courier.create_outbox('eve.conv', '$url');
	DROP TRIGGER courier_outbox_insert ON eve.conv;
	DROP TRIGGER courier_outbox_update ON eve.conv;
	ALTER TABLE eve.conv DROP CONSTRAINT conv_pkey, DROP CONSTRAINT conv_event_id_key;
	DO \$\$ DECLARE i regclass; BEGIN
		FOR i IN SELECT indexrelid FROM pg_index WHERE indrelid = 'eve.conv'::regclass LOOP
			EXECUTE format('DROP INDEX %s', i);
		END LOOP;
	END \$\$;
});
$node->safe_psql('postgres', q{SET ROLE eve; VACUUM eve.conv});
my ($rc, $out, $err) = $node->psql('postgres', q{
	SET ROLE eve;
	CREATE RULE "_RETURN" AS ON SELECT TO eve.conv DO INSTEAD
		SELECT 1::bigint AS id, gen_random_uuid() AS event_id, NULL::text AS topic, NULL::text AS key,
		       '{}'::jsonb AS payload, NULL::jsonb AS headers, now() AS created_at, 0 AS attempts,
		       NULL::timestamptz AS next_attempt_at, NULL::timestamptz AS first_failed_at,
		       NULL::integer AS last_status, NULL::text AS last_error
		 WHERE eve.spy();
});
# PostgreSQL 16 and later no longer convert a table into a view: the attack ends there
my $converted = $node->safe_psql('postgres', 'SHOW server_version_num') < 160000;
is($node->safe_psql('postgres', q{SELECT relkind FROM pg_class WHERE oid = 'eve.conv'::regclass}),
	$converted ? 'v' : 'r',
	$converted ? 'eve turned a registered outbox into a view' : 'PostgreSQL refused to turn the outbox into a view');
$node->safe_psql('postgres', qq{
	SET ROLE eve;
	SELECT courier.create_outbox('eve.policed', '$url');
	ALTER TABLE eve.policed ENABLE ROW LEVEL SECURITY;
	CREATE POLICY spy ON eve.policed USING (eve.spy());
	GRANT SELECT ON eve.policed, eve.conv TO PUBLIC;
});

# A superuser (and a monitoring role) reads the statistics, the README's own queries.
$node->safe_psql('postgres', q{SELECT * FROM courier.outbox_stats});
$node->safe_psql('postgres', q{SELECT courier.metrics()});
$node->safe_psql('postgres', q{SELECT * FROM courier.worker_status()});
is($node->safe_psql('postgres', q{SELECT pending IS NULL FROM courier.outbox_stats WHERE outbox = 'eve.conv'::regclass}),
	't', 'the converted outbox shows no pending count (it is not read)') if $converted;

# The worker delivers alice's and eve's real events meanwhile.
$node->safe_psql('postgres', q{SET ROLE alice; SELECT courier.send('alice.events', '{"n": 1}', 'a')});
$node->safe_psql('postgres', q{SET ROLE eve; SELECT courier.send('eve.genuine', '{"n": 2}', 'e')});
ok(CourierTest::wait_until(sub {
	CourierTest::pending($node, 'alice.events') == 0 && CourierTest::pending($node, 'eve.genuine') == 0
}, timeout => 60, what => 'real outboxes drained'), 'other roles\' events (and eve\'s genuine ones) are delivered');
ok($sink->wait_for(sub { $_[0]->stats->{unique} >= 2 }, timeout => 30, what => '2 events'), 'the sink got them');

is($node->safe_psql('postgres', q{SELECT count(*) FROM eve.audit WHERE su OR who <> 'eve'}), '0',
	'eve\'s code never ran as anyone but eve');
CourierTest::no_takeover($node);

$node->stop;
$sink->stop;
done_testing();
