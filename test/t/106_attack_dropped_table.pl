# Attack: leave a registration behind.  DROP TABLE of an outbox (instead of drop_outbox) used to
# leave its row in courier.outboxes under a bare OID, endpoint included, dumped and restored as
# that OID for whatever table gets it next.  Now an sql_drop event trigger removes the registration
# for DROP TABLE by the owner or a superuser, DROP SCHEMA ... CASCADE and DROP OWNED BY; dead
# letters stay as evidence under the table's name; pg_dump never writes a bare-OID registration;
# DROP EXTENSION pg_courier is not hindered; and the worker keeps delivering the other outboxes.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('attack_dropped');
my $url = $sink->url('/hook');

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	CREATE ROLE mallory LOGIN;
	CREATE ROLE alice LOGIN;
	CREATE SCHEMA eve AUTHORIZATION eve;
	CREATE SCHEMA eve2 AUTHORIZATION eve;
	CREATE SCHEMA mallory AUTHORIZATION mallory;
	CREATE SCHEMA alice AUTHORIZATION alice;
});
$node->safe_psql('postgres', qq{SET ROLE alice; SELECT courier.create_outbox('alice.o', '$url')});
for my $ob (qw(eve.a eve.b eve.c eve2.d))
{
	$node->safe_psql('postgres', qq{SET ROLE eve; SELECT courier.create_outbox('$ob', '$url')});
}
$node->safe_psql('postgres', qq{SET ROLE mallory; SELECT courier.create_outbox('mallory.m', '$url')});

my $n = 0;
sub send_alice
{
	$node->safe_psql('postgres', q{SET ROLE alice; SELECT courier.send('alice.o', jsonb_build_object('n', 1))});
	$n++;
	ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'alice.o') == 0 }, timeout => 60,
		what => "alice's event $n"), "alice's events are still delivered ($_[0])");
}
sub registered
{
	return $node->safe_psql('postgres', q{SELECT string_agg(outbox::text, ',' ORDER BY outbox::text) FROM courier.outboxes});
}
send_alice('before');

# eve's evidence: a dead letter of eve.a
$node->safe_psql('postgres', q{
	SET ROLE eve;
	INSERT INTO courier.dead_letters (outbox, owner, event_id, payload, created_at, attempts, first_failed_at, last_failed_at)
	VALUES ('eve.a', 'eve', '00000000-0000-0000-0000-0000000000aa', '{}', now(), 1, now(), now());
});

$node->safe_psql('postgres', 'SET ROLE eve; DROP TABLE eve.a');
is(registered(), 'alice.o,eve.b,eve.c,eve2.d,mallory.m', 'DROP TABLE by the owner unregisters');
is($node->safe_psql('postgres', q{SELECT coalesce(outbox::text, 'NULL') || ' ' || outbox_name FROM courier.dead_letters}),
	'NULL eve.a', 'the dead letter stays, under the name of its table, not an OID');
$node->safe_psql('postgres', 'DROP TABLE eve.b');
is(registered(), 'alice.o,eve.c,eve2.d,mallory.m', 'DROP TABLE of eve\'s table by a superuser unregisters');
$node->safe_psql('postgres', 'SET ROLE eve; DROP SCHEMA eve2 CASCADE');
is(registered(), 'alice.o,eve.c,mallory.m', 'DROP SCHEMA ... CASCADE unregisters');
$node->safe_psql('postgres', 'DROP OWNED BY mallory');
is(registered(), 'alice.o,eve.c', 'DROP OWNED BY unregisters');
send_alice('after the drops');

# Even with the event trigger out of the way (single-user mode does not fire it), pg_dump writes
# no registration under a bare OID.
$node->safe_psql('postgres', q{
	ALTER EVENT TRIGGER courier_outbox_dropped DISABLE;
	SET ROLE eve; DROP TABLE eve.c; RESET ROLE;
	ALTER EVENT TRIGGER courier_outbox_dropped ENABLE;
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.outboxes o WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = o.outbox)}),
	'1', 'a dangling registration was forced');
my ($dump, $dump_err) = run_command([ 'pg_dump', '--dbname', $node->connstr('postgres') ]);
my ($copy) = $dump =~ /^COPY courier\.outboxes [^\n]*\n(.*?)^\\\.$/ms;
ok(defined $copy, 'pg_dump writes the registrations');
my @rows = split /\n/, $copy // '';
is(scalar(@rows), 1, 'one registration dumped');
like($rows[0] // '', qr/^alice\.o\t/, 'alice\'s');
is(scalar(grep { /^\d+\t/ } @rows), 0, 'no registration under a bare OID');
unlike($dump, qr/eve\.c/, 'nothing of the dropped table');
$node->safe_psql('postgres', q{DELETE FROM courier.outboxes o WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = o.outbox)});
send_alice('after the dump');

# DROP EXTENSION pg_courier (the event trigger is the extension's) and the way back.
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', qq{CREATE EXTENSION pg_courier; SELECT courier.create_outbox('keep', '$url');
	INSERT INTO keep (payload) VALUES ('{"n": 1}')});
my ($rc, $out, $err) = $node->psql('other', 'DROP EXTENSION pg_courier CASCADE');
is($rc, 0, 'DROP EXTENSION pg_courier CASCADE works') or diag $err;
is($node->safe_psql('other', q{SELECT count(*) FROM pg_event_trigger}), '0', 'and takes its event trigger along');
$node->safe_psql('other', 'DROP TABLE keep; CREATE TABLE t (x int); DROP TABLE t');
$node->safe_psql('other', qq{CREATE EXTENSION pg_courier; SELECT courier.create_outbox('keep', '$url')});
is($node->safe_psql('other', q{SELECT count(*) FROM courier.outboxes}), '1', 'and a new install works');

CourierTest::no_takeover($node);

$node->stop;
$sink->stop;
done_testing();
