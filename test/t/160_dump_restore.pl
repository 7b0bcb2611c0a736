# Dump and restore with the real pg_dump/pg_restore: a full dump (custom format + pg_restore, plain
# SQL + psql) restored into a database that courier.databases lists is delivered without manual
# steps (registrations, triggers, sequences: ids continue); partial dumps (--exclude-schema, -n, -t)
# keep every registration, dead letter and saga type whose relation is in the dump, and the rows
# naming a relation that is not are left out with one WARNING instead of failing the whole COPY.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $url = $sink->url('/hook');
# src is not served: its events wait until a restored copy is.
my $node = CourierTest::node('dump', create => 0, databases => 'postgres, whole, plain');
my $dir = PostgreSQL::Test::Utils::tempdir;

$node->safe_psql('postgres', q{CREATE ROLE app LOGIN; CREATE DATABASE src});
$node->safe_psql('src', q{
	CREATE EXTENSION pg_courier;
	CREATE SCHEMA app AUTHORIZATION app;
	CREATE SCHEMA other AUTHORIZATION app;
});
$node->safe_psql('src', qq{
	SET ROLE app;
	SELECT courier.create_outbox('app.ob', '$url');
	SELECT courier.create_outbox('other.ob2', '$url');
	SELECT courier.send('app.ob', jsonb_build_object('n', i), 'k') FROM generate_series(1, 3) i;
	SELECT courier.saga_define('in_app', '[{"name": "a"}]', 'app.ob');
	SELECT courier.saga_define('in_other', '[{"name": "a"}]', 'other.ob2');
});
$node->safe_psql('src', q{
	INSERT INTO courier.dead_letters (outbox, owner, event_id, payload, created_at, attempts, first_failed_at, last_failed_at)
	SELECT o, 'app', gen_random_uuid(), '{"dead": true}', now(), 3, now(), now()
	  FROM unnest(ARRAY['app.ob', 'other.ob2']::regclass[]) o;
});
my $max_dead = $node->safe_psql('src', 'SELECT max(id) FROM courier.dead_letters');
my $max_id = $node->safe_psql('src', 'SELECT max(id) FROM app.ob');

# counts(DB): registrations, dead letters (of them kept by name only), saga types.
sub counts
{
	my ($db) = @_;
	return $node->safe_psql($db, q{
		SELECT (SELECT string_agg(outbox::text, ',' ORDER BY outbox::text) FROM courier.outboxes) || ' / '
		    || (SELECT string_agg(COALESCE(outbox::text, 'gone:' || outbox_name), ',' ORDER BY 1) FROM courier.dead_letters) || ' / '
		    || (SELECT string_agg(saga_type || '=' || COALESCE(outbox::text, '-'), ',' ORDER BY saga_type) FROM courier.saga_types)});
}
is(counts('src'), 'app.ob,other.ob2 / app.ob,other.ob2 / in_app=app.ob,in_other=other.ob2', 'the source database');

# dump(FILE, ARGS...) / restore: the real tools, from the PG_CONFIG's bindir (on PATH).
sub dump_db
{
	my ($file, @args) = @_;
	my ($out, $err) = run_command([ 'pg_dump', @args, '-f', "$dir/$file", '-d', $node->connstr('src') ]);
	return $err;
}

#--------------------------------------------------------------------------------------------------
# Full dump, custom format, into a served database: delivered without manual steps
#--------------------------------------------------------------------------------------------------

is(dump_db('whole.dump', '-Fc'), '', 'pg_dump -Fc of the whole database');
$node->safe_psql('postgres', 'CREATE DATABASE whole');
my ($out, $err) = run_command([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('whole'), "$dir/whole.dump" ]);
is($err, '', 'pg_restore: no error, no warning');
is(counts('whole'), counts('src'), 'every registration, dead letter and saga type is restored');
ok($sink->wait_for(sub { $sink->stats->{unique} == 3 }, timeout => 60, what => 'restored events'),
	'the events that waited in the dump are delivered by the restored database\'s worker');
$node->safe_psql('whole', q{SET ROLE app; SELECT courier.send('app.ob', '{"n": 4}', 'k')});
ok($sink->wait_for(sub { $sink->stats->{unique} == 4 }, timeout => 30, what => 'new event'),
	'an event sent after the restore is delivered (the triggers are in place)');
cmp_ok($node->safe_psql('whole', q{SELECT last_value FROM pg_sequences
	WHERE (schemaname || '.' || sequencename)::regclass = pg_get_serial_sequence('app.ob', 'id')::regclass}),
	'>', $max_id, 'outbox ids continue after the dumped ones');
$node->safe_psql('whole', q{
	INSERT INTO courier.dead_letters (outbox, owner, event_id, payload, created_at, attempts, first_failed_at, last_failed_at)
	VALUES ('app.ob', 'app', gen_random_uuid(), '{}', now(), 1, now(), now())});
cmp_ok($node->safe_psql('whole', 'SELECT max(id) FROM courier.dead_letters'), '>', $max_dead,
	'dead letter ids continue after the dumped ones (the configuration sequences are dumped)');

#--------------------------------------------------------------------------------------------------
# Partial dumps
#--------------------------------------------------------------------------------------------------

# --exclude-schema, plain SQL through psql (ON_ERROR_STOP): the rows of other.ob2 are left out with
# one WARNING per table; its dead letter is kept under its name.
is(dump_db('part.sql', '--exclude-schema=other'), '', 'pg_dump --exclude-schema=other (plain SQL)');
$node->safe_psql('postgres', 'CREATE DATABASE plain');
my ($ret, $stdout, $stderr) = $node->psql('plain', undef, extra_params => [ '-v', 'ON_ERROR_STOP=1', '-f', "$dir/part.sql" ]);
is($ret, 0, 'the partial dump restores without an error') or diag($stderr);
my @warnings = sort map { "$_->[1]: $_->[0]" }
  map { [ /(\d+) rows of (\w+)/ ] } $stderr =~ /(WARNING:  pg_courier: \d+ rows of \w+ name relations or roles that are not in this database)/g;
is(join(', ', @warnings), 'dead_letters: 1, outboxes: 1, saga_types: 1', 'one WARNING per table, counting the rows left out');
like($stderr, qr/Missing: other\.ob2\./, 'the WARNING names the missing relation');
is(counts('plain'), 'app.ob / app.ob,gone:other.ob2 / in_app=app.ob',
	'the registration, dead letter and saga type of the dumped outbox are kept; the other dead letter by name');
ok($sink->wait_for(sub { $sink->stats->{unique} == 4 && $sink->stats->{accepted} >= 7 }, timeout => 60,
		what => 'events of the partial restore'),
	'the partially restored database delivers its outbox too');

# --exclude-schema, custom format and pg_restore: the same, pg_restore reports no error.
is(dump_db('part.dump', '-Fc', '--exclude-schema=other'), '', 'pg_dump -Fc --exclude-schema=other');
$node->safe_psql('postgres', 'CREATE DATABASE part_custom');
($out, $err) = run_command([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('part_custom'), "$dir/part.dump" ]);
is($err, '', 'pg_restore of the partial dump: no error');
is(counts('part_custom'), 'app.ob / app.ob,gone:other.ob2 / in_app=app.ob', 'the same rows are kept');

# -n app -n courier into a database that has the extension: the schema's tables and the
# registrations (the extension's own schema carries its configuration tables' data).
is(dump_db('nsp.dump', '-Fc', '-n', 'app', '-n', 'courier'), '', 'pg_dump -n app -n courier');
$node->safe_psql('postgres', 'CREATE DATABASE nsp');
$node->safe_psql('nsp', 'CREATE EXTENSION pg_courier');
($out, $err) = run_command([ 'pg_restore', '-d', $node->connstr('nsp'), "$dir/nsp.dump" ]);
my @errors = grep { !/schema "courier" already exists|CREATE SCHEMA courier|errors ignored on restore|^\s*$|^Command was/ }
  split /\n/, $err;
is("@errors", '', 'pg_restore -n: no error but "schema courier already exists"');
is(counts('nsp'), 'app.ob / app.ob,gone:other.ob2 / in_app=app.ob', 'registrations of the dumped schema are kept');

# -t app.ob -t 'courier.*': one table and the registrations.
is(dump_db('tbl.dump', '-Fc', '-t', 'app.ob', '-t', 'courier.outboxes', '-t', 'courier.dead_letters',
		'-t', 'courier.saga_types'), '', 'pg_dump -t app.ob -t courier.outboxes ...');
$node->safe_psql('postgres', 'CREATE DATABASE tbl');
$node->safe_psql('tbl', 'CREATE EXTENSION pg_courier; CREATE SCHEMA app AUTHORIZATION app');
($out, $err) = run_command([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('tbl'), "$dir/tbl.dump" ]);
is($err, '', 'pg_restore -t: no error');
is(counts('tbl'), 'app.ob / app.ob,gone:other.ob2 / in_app=app.ob', 'the dumped table\'s registration is kept');

$node->stop;
$sink->stop;
done_testing();
