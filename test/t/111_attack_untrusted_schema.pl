# Attack: the extension's schema (or the extension) belongs to a role that is not a superuser.  Its
# owner could rename and replace what the delivery worker (a superuser) reads and calls, so the
# worker does not serve that database: it says so once in the log (not once per round), shows it in
# courier.worker_status(), and serves again once a superuser owns the schema.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('attack_untrusted_schema');
my $url = $sink->url('/hook');

$node->safe_psql('postgres', qq{
	CREATE ROLE mallory LOGIN;
	SELECT courier.create_outbox('public.o', '$url');
	SELECT courier.send('public.o', '{"n": 1}');
});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'public.o') == 0 }, timeout => 30, what => 'first event'),
	'served while a superuser owns the schema');

# the schema changes hands (CREATE EXTENSION into a schema a non-superuser made comes to the same)
$node->safe_psql('postgres', 'ALTER SCHEMA courier OWNER TO mallory');
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', 'SELECT state FROM courier.worker_status()') eq 'refusing: untrusted schema' },
	timeout => 30, what => 'refusal'), 'the worker refuses to serve the database');
$node->safe_psql('postgres', q{SELECT courier.send('public.o', '{"n": 2}')});
my $rounds = $node->safe_psql('postgres', 'SELECT rounds FROM courier.worker_status()');
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', 'SELECT rounds FROM courier.worker_status()') >= $rounds + 10 },
	timeout => 60, what => 'ten more rounds'), 'the worker goes on looking');
is(CourierTest::pending($node, 'public.o'), '1', 'nothing is sent meanwhile');
my $log = slurp_file($node->logfile);
my $warnings = () = $log =~ /WARNING:  pg_courier: not serving database "postgres"/g;
is($warnings, 1, 'one WARNING line, not one per round');
like($log, qr/not owned by a superuser.*\n.*HINT:  Its owner could replace/, 'the WARNING says why, with a hint');

# back in a superuser's hands: served again, and said once
$node->safe_psql('postgres', 'ALTER SCHEMA courier OWNER TO CURRENT_USER');
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'public.o') == 0 }, timeout => 30, what => 'second event'),
	'served again once a superuser owns the schema');
$log = slurp_file($node->logfile);
$warnings = () = $log =~ /WARNING:  pg_courier: not serving database "postgres"/g;
is($warnings, 1, 'still one WARNING line');
like($log, qr/owned by a superuser again: serving database "postgres"/, 'the recovery is logged');
unlike($log, qr/terminated by signal/, 'no backend crashed');

$node->stop;
$sink->stop;
done_testing();
