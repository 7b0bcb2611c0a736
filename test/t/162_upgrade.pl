# Upgrades: CREATE EXTENSION pg_courier VERSION '0.1.0' followed by ALTER EXTENSION pg_courier UPDATE
# gives the schema of a fresh install (pg_dump --schema-only --binary-upgrade, which dumps every
# member of the extension, compared after removing only what legitimately differs: OIDs, relfrozenxid,
# LSNs, the dump's \restrict key), and keeps the rows of every table of the extension, after which
# delivery goes on where it stopped.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $url = $sink->url('/hook');
my $node = CourierTest::node('upgrade', create => 0, databases => 'postgres, upgraded');

my $default = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'pg_courier'");
is($node->safe_psql('postgres',
		"SELECT string_agg(version, ',' ORDER BY version) FROM pg_available_extension_versions WHERE name = 'pg_courier'"),
	'0.1.0,0.2.0', 'the install scripts of 0.1.0 and 0.2.0 are both installed');
is($node->safe_psql('postgres',
		"SELECT path FROM pg_extension_update_paths('pg_courier') WHERE source = '0.1.0' AND target = '$default'"),
	"0.1.0--$default", "0.1.0 updates to the default version $default");

#--------------------------------------------------------------------------------------------------
# Schema: fresh install and upgraded install dump the same
#--------------------------------------------------------------------------------------------------

# schema_dump(DB): the schema as pg_dump --binary-upgrade writes it (every extension member).
sub schema_dump
{
	my ($db) = @_;
	my ($out, $err) = run_command(
		[ 'pg_dump', '--schema-only', '--binary-upgrade', '-d', $node->connstr($db) ]);
	my @lines;
	for my $line (split /\n/, $out)
	{
		next if $line =~ /^\\(?:un)?restrict /;                    # random key per dump
		next if $line =~ /^SELECT pg_catalog\.binary_upgrade_set_next_/;  # OIDs, relfilenodes, LSNs
		$line =~ s/relfrozenxid = '\d+', relminmxid = '\d+'/relfrozenxid = X, relminmxid = X/;
		$line =~ s/^WHERE oid = '\d+';$/WHERE oid = OID;/;           # (of that relfrozenxid UPDATE)
		# the configuration tables' OIDs in binary_upgrade_create_empty_extension
		$line =~ s/'\{(\d+(?:,\d+)*)\}'/"'{" . join(',', map { 'OID' } split(m{,}, $1)) . "}'"/e
		  if $line =~ /binary_upgrade_create_empty_extension/;
		push @lines, $line;
	}
	return (join("\n", @lines) . "\n", $err);
}
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('postgres', 'CREATE DATABASE stepped');
$node->safe_psql('fresh', 'CREATE EXTENSION pg_courier');
$node->safe_psql('stepped', "CREATE EXTENSION pg_courier VERSION '0.1.0'");
is($node->safe_psql('stepped', "SELECT extversion FROM pg_extension WHERE extname = 'pg_courier'"),
	'0.1.0', 'installed as 0.1.0');
my ($at_010) = schema_dump('stepped');
$node->safe_psql('stepped', 'ALTER EXTENSION pg_courier UPDATE');
is($node->safe_psql('stepped', "SELECT extversion FROM pg_extension WHERE extname = 'pg_courier'"),
	$default, "updated to $default");

my ($fresh, $fresh_err) = schema_dump('fresh');
isnt($at_010, $fresh, '(the comparison can fail: 0.1.0 dumps differently)');
my ($stepped, $stepped_err) = schema_dump('stepped');
is($fresh_err, '', 'pg_dump of the fresh install says nothing on stderr');
cmp_ok(scalar(() = $fresh =~ /ALTER EXTENSION pg_courier ADD/g), '>', 100,
	'the dump lists the extension\'s members (binary-upgrade mode)');
my @diff;
{
	my @a = split /\n/, $fresh;
	my @b = split /\n/, $stepped;
	for my $i (0 .. ($#a > $#b ? $#a : $#b))
	{
		my ($x, $y) = ($a[$i] // '<end>', $b[$i] // '<end>');
		push @diff, "line $i:\n  fresh:    $x\n  upgraded: $y" if $x ne $y;
		last if @diff >= 10;
	}
}
is(scalar(@diff), 0, 'an upgraded install dumps the same schema as a fresh one')
  or diag(join("\n", @diff));

#--------------------------------------------------------------------------------------------------
# Data: rows in every table under 0.1.0 are all there after the upgrade
#--------------------------------------------------------------------------------------------------

my $db = 'upgraded';
$node->safe_psql('postgres', "CREATE DATABASE $db");
$node->safe_psql($db, "CREATE EXTENSION pg_courier VERSION '0.1.0'");
$node->safe_psql($db, qq{
	-- (retention: its delivered event below is kept, not purged by the worker as an orphan's)
	SELECT courier.create_outbox('ob', '$url', 'cloudevents', '{"retention": "30 days"}');
	SELECT courier.pause('ob');
	SELECT courier.send('ob', jsonb_build_object('n', i), 'k' || (i % 2)) FROM generate_series(1, 5) i;
	INSERT INTO courier.dead_letters (outbox, owner, outbox_id, event_id, key, payload, created_at, attempts,
	                                  first_failed_at, last_failed_at, last_status, last_error)
	VALUES ('ob', current_user::regrole, 1000, gen_random_uuid(), 'dk', '{"dead": 1}', now(), 7, now(), now(), 500,
	        'HTTP 500');
	INSERT INTO courier.delivered_events (outbox, outbox_id, event_id, key, payload, created_at, attempts)
	VALUES ('ob', 999, gen_random_uuid(), 'k0', '{"delivered": 1}', now(), 1);
	-- keys as 0.1.0 left them (the key functions of the installed library work on the 0.2.0 table)
	INSERT INTO courier.idempotency_keys (scope, key, fingerprint, state, status_code, response, lease_token,
	                                      lease_expires_at, created_at, completed_at, expires_at)
	VALUES ('', 'order-1', 'fp-1', 'completed', 201, '{"order": 1}', NULL, NULL, now(), now(), now() + interval '1 day'),
	       ('', 'order-2', NULL, 'in_progress', NULL, NULL, gen_random_uuid(), now() + interval '30 seconds', now(),
	        NULL, now() + interval '1 day');
	SELECT courier.consume_once('billing', gen_random_uuid());
	SELECT courier.saga_define('order', '[{"name": "create", "compensation": "cancel"}, {"name": "ship"}]', 'ob');
	SELECT courier.saga_start('order', '{"order_id": 1}');
	SELECT courier.ring_create('shards', ARRAY['a', 'b', 'c'], 10);
	SELECT courier.map_create('tenants', 'directory', 'default');
	SELECT courier.map_set('tenants', 'acme', 'shard-a');
	SELECT courier.map_create('ranges', 'range');
	SELECT courier.map_set('ranges', 0, 100, 'low');
	CREATE TABLE orders (id int PRIMARY KEY, total numeric);
	SELECT courier.cache_invalidate_on('orders', 'order:{id}');
});

# Every table of the extension, and the outbox, with the columns it had under 0.1.0.
my @tables = split /\n/, $node->safe_psql($db, q{
	SELECT c.oid::regclass FROM pg_class c
	 WHERE c.relnamespace = 'courier'::regnamespace AND c.relkind = 'r' ORDER BY 1::text});
push @tables, 'public.ob', 'courier.cache_invalidations';
my (%columns, %before);
for my $t (@tables)
{
	$columns{$t} = $node->safe_psql($db, qq{
		SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
		 WHERE attrelid = '$t'::regclass AND attnum > 0 AND NOT attisdropped});
	$before{$t} = $node->safe_psql($db, qq{
		SELECT count(*) || ' ' || md5(COALESCE(string_agg(r, E'\\n' ORDER BY r), ''))
		  FROM (SELECT ROW($columns{$t})::text AS r FROM $t) x});
}
my @empty = grep { $before{$_} =~ /^0 / } @tables;
is("@empty", '', 'under 0.1.0 every table of the extension holds rows (' . scalar(@tables) . ' tables)');
my $pending = $node->safe_psql($db, 'SELECT count(*) FROM ob');
my $max_id = $node->safe_psql($db, 'SELECT max(id) FROM ob');
cmp_ok($pending, '>=', 5, "the paused outbox holds $pending events");

$node->safe_psql($db, 'ALTER EXTENSION pg_courier UPDATE');
is($node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'pg_courier'"), $default,
	"updated to $default");
for my $t (@tables)
{
	is($node->safe_psql($db, qq{
		SELECT count(*) || ' ' || md5(COALESCE(string_agg(r, E'\\n' ORDER BY r), ''))
		  FROM (SELECT ROW($columns{$t})::text AS r FROM $t) x}),
		$before{$t}, "$t: the same rows after the upgrade");
}
is($node->safe_psql($db, q{SELECT count(*) FROM courier.outboxes WHERE outbox = 'ob'::regclass AND NOT enabled}),
	'1', 'the registration is kept, still paused');
is($node->safe_psql($db, q{SELECT outcome || ' ' || status_code FROM courier.idempotency_begin('order-1', 'fp-1')}),
	'replay 201', 'a stored idempotent answer is replayed after the upgrade');
is($node->safe_psql($db, q{SELECT courier.ring_route('shards', 'x') IS NOT NULL AND courier.map_route('tenants', 'acme') = 'shard-a'}),
	't', 'rings and maps route after the upgrade');

# Delivery goes on: the events that waited, then new ones with ids after the old ones.
is($sink->stats->{unique}, 0, 'nothing was delivered from the paused outbox');
$node->safe_psql($db, q{SELECT courier.resume('ob')});
ok($sink->wait_for(sub { $sink->stats->{unique} == $pending }, timeout => 60, what => 'old events'),
	"the $pending events that waited are delivered after the upgrade");
$node->safe_psql($db, q{SELECT courier.send('ob', '{"after": "upgrade"}', 'k0')});
ok($sink->wait_for(sub { $sink->stats->{unique} == $pending + 1 }, timeout => 30, what => 'new event'),
	'an event sent after the upgrade is delivered');
cmp_ok($node->safe_psql($db, q{SELECT last_value FROM pg_sequences
	                               WHERE (schemaname || '.' || sequencename)::regclass = pg_get_serial_sequence('ob', 'id')::regclass}),
	'>', $max_id, 'outbox ids continue after the old ones');

$node->stop;
$sink->stop;
done_testing();
