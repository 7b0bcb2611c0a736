# Attack: SSRF.  A role that can create a table points an outbox at the server's own services,
# private networks or cloud metadata, hoping the worker (a superuser process) will POST there and
# tell the answer back in last_error, or tell open ports from closed ones.
#
# Under the default endpoint policy: literal non-public addresses in every spelling are refused at
# create_outbox; a name that resolves to 127.0.0.1 gets past create_outbox (names are not resolved
# then) but the worker refuses the connection itself (the sink receives nothing) and records a
# failure in our words, the same for open and closed ports.  Only a superuser's reload of
# courier.allowed_hosts / courier.allow_private_endpoints lets it through.  Answers kept in
# last_error and dead letters are cut short.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('ssrf', default_policy => 1,
	conf => [ "courier.retry_base_ms = 50", "courier.retry_max_ms = 200", "courier.breaker_failure_threshold = 0",
			  "courier.poll_interval = '100ms'" ]);
my $port = $sink->port;
my $pgport = $node->port;

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	CREATE SCHEMA eve AUTHORIZATION eve;
	CREATE ROLE alice LOGIN;
	CREATE SCHEMA alice AUTHORIZATION alice;
});

# --- literal addresses: refused at create_outbox, in our words, whatever the spelling ----------
my @literal = ("127.0.0.1:$pgport", "127.0.0.1:1", '0x7f000001', '2130706433', '127.1', '0177.0.0.1', '0', '0.0.0.0',
	'[::1]', '[::ffff:7f00:1]', '[::ffff:127.0.0.1]', '[::127.0.0.1]', '[64:ff9b::7f00:1]', '[2002:7f00:1::]',
	'127.0.0.1.', '%31%32%37.0.0.1', '[fe80::1%25lo]', 'localhost', 'LocalHost.', 'admin.localhost',
	'10.0.0.1', '172.16.5.4', '192.168.0.1', '169.254.169.254', '[fd00:ec2::254]', '100.100.100.200',
	'100.64.1.1', '198.18.0.1', '224.0.0.251', '255.255.255.255', '[fd00::1]', '[fe80::1]');
my %texts;
for my $host (@literal)
{
	my ($rc, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nSET ROLE eve;\nSELECT courier.create_outbox('eve.o', 'http://$host/x');");
	isnt($rc, 0, "create_outbox refuses http://$host/");
	like($err, qr/ERROR:  42501: endpoint ".*" is refused by pg_courier's endpoint policy/, "  in our words ($host)");
	like($err, qr/HINT:  .*courier\.allowed_hosts.*courier\.allow_private_endpoints/, "  with a hint naming the settings ($host)");
	unlike($err, qr/[Cc]ouldn't|[Cc]onnection refused|curl/i, "  no library wording ($host)");
	(my $norm = $err) =~ s/"http:[^"]*"/URL/;
	$norm =~ s/LOCATION:.*//s;
	$texts{$host} = $norm;
}
is($texts{"127.0.0.1:$pgport"}, $texts{'127.0.0.1:1'}, 'an open and a closed port get the same answer');
is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.outboxes}), '0', 'nothing was registered');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'o' AND relnamespace = 'eve'::regnamespace}),
	'0', 'no table was left behind');

# --- a name that resolves to 127.0.0.1 gets past create_outbox, not past the worker ------------
my $name = `hostname`;
chomp $name;
my $resolved = `getent ahostsv4 '$name' 2>/dev/null`;
SKIP:
{
	skip "the host name '$name' does not resolve to 127.0.0.1 here ($resolved)", 14
	  unless $name =~ /^[A-Za-z0-9.-]+$/ && $resolved =~ /^127\.0\.0\.1\s/m && lc($name) !~ /localhost/;

	$node->safe_psql('postgres', qq{
		SET ROLE eve;
		SELECT courier.create_outbox('eve.named', 'http://$name:$port/hook');
		SELECT courier.create_outbox('eve.open_port', 'http://$name:$pgport/');
		SELECT courier.create_outbox('eve.closed_port', 'http://$name:1/');
		SELECT courier.send('eve.named', '{"n": 1}', 'k');
		SELECT courier.send('eve.open_port', '{"n": 1}', 'k');
		SELECT courier.send('eve.closed_port', '{"n": 1}', 'k');
	});
	my $errors_sql = q{SELECT string_agg(coalesce(e, '(none)'), ' | ' ORDER BY t) FROM (
		SELECT 'named' t, (SELECT last_error FROM eve.named) e UNION ALL
		SELECT 'open', (SELECT last_error FROM eve.open_port) UNION ALL
		SELECT 'closed', (SELECT last_error FROM eve.closed_port)) s};
	ok(CourierTest::wait_until(sub {
		$node->safe_psql('postgres', q{SELECT count(*) FROM (SELECT last_error FROM eve.named UNION ALL
			SELECT last_error FROM eve.open_port UNION ALL SELECT last_error FROM eve.closed_port) s
			WHERE last_error IS NOT NULL}) eq '3' }, timeout => 30, what => 'failures recorded'),
		'the worker recorded a failure for each name-based endpoint');
	my $named = $node->safe_psql('postgres', q{SELECT last_error FROM eve.named});
	like($named, qr/the endpoint's address is refused by pg_courier's endpoint policy/, 'the failure names the policy');
	unlike($named, qr/127\.0\.0\.1|[Cc]ouldn't|refused to connect|[Cc]onnection refused/, 'and leaks no address or library wording');
	my $open = $node->safe_psql('postgres', q{SELECT last_error FROM eve.open_port});
	my $closed = $node->safe_psql('postgres', q{SELECT last_error FROM eve.closed_port});
	is($open, $closed, 'an open port and a closed port fail alike');
	is($open, $named, 'and like the sink\'s port');
	is($sink->stats->{requests}, 0, 'the sink received nothing');
	is($node->safe_psql('postgres', q{SET ROLE eve; SELECT last_error FROM courier.outbox_stats WHERE outbox = 'eve.named'::regclass}),
		$named, 'outbox_stats shows the same text');

	# A superuser allows 127.0.0.1/32: the name's address is now covered explicitly.
	$node->safe_psql('postgres', q{SELECT courier.drop_outbox('eve.open_port'); SELECT courier.drop_outbox('eve.closed_port')});
	$node->safe_psql('postgres', q{ALTER SYSTEM SET courier.allowed_hosts = '127.0.0.1/32'; SELECT pg_reload_conf()});
	ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'eve.named') == 0 }, timeout => 30, what => 'delivered'),
		"with courier.allowed_hosts = '127.0.0.1/32' the event is delivered");
	is($sink->stats->{unique}, 1, 'the sink has it');

	# The list no longer names the address: refused again (the worker applied the reload).
	$node->safe_psql('postgres', q{ALTER SYSTEM SET courier.allowed_hosts = 'hooks.example.com'; SELECT pg_reload_conf()});
	ok(CourierTest::wait_until(sub {
		$node->safe_psql('postgres', q{SHOW courier.allowed_hosts}) eq 'hooks.example.com' }, timeout => 10,
		what => 'reload'), 'reloaded');
	$node->safe_psql('postgres', q{SET ROLE eve; SELECT courier.send('eve.named', '{"n": 2}', 'k')});
	ok(CourierTest::wait_until(sub {
		($node->safe_psql('postgres', q{SELECT last_error FROM eve.named}) // '') =~ /endpoint policy/ },
		timeout => 30, what => 'refused again'), 'after a reload that removes it, refused again (kept-alive connection included)');
	is($sink->stats->{unique}, 1, 'the sink got nothing more');

	# allow_private_endpoints = on (list emptied): delivered.
	$node->safe_psql('postgres', q{ALTER SYSTEM RESET courier.allowed_hosts;
		ALTER SYSTEM SET courier.allow_private_endpoints = on; SELECT pg_reload_conf()});
	ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'eve.named') == 0 }, timeout => 30, what => 'delivered'),
		'after a reload with courier.allow_private_endpoints = on the event is delivered');

	# Answers are cut short in last_error, dead letters and the shared counters.
	$sink->faults({ status => { code => 404, count => 5,
		body => { a_internal => 'SECRET-DATA-' . ('x' x 400), z_db_password => 'hunter2' } } });
	$node->safe_psql('postgres', q{SET ROLE eve; SELECT courier.send('eve.named', '{"n": 3}', 'k')});
	ok(CourierTest::wait_until(sub {
		$node->safe_psql('postgres', q{SELECT count(*) FROM courier.dead_letters WHERE outbox = 'eve.named'::regclass}) eq '1' },
		timeout => 30, what => 'dead letter'), 'a 404 moves the event to the dead letters');
	my $dead = $node->safe_psql('postgres', q{SELECT last_error FROM courier.dead_letters WHERE outbox = 'eve.named'::regclass});
	like($dead, qr/^HTTP 404: .*\(cut at 200 bytes\)$/, 'the dead letter keeps an excerpt of the answer, marked as cut');
	cmp_ok(length($dead), '<=', 256, 'at most 256 bytes');
	unlike($dead, qr/hunter2/, 'what came after the excerpt is not kept');
	my $shared = $node->safe_psql('postgres', q{SELECT last_error FROM courier.outbox_stats WHERE outbox = 'eve.named'::regclass});
	cmp_ok(length($shared), '<=', 256, 'the shared counters\' last_error too');
	unlike($shared, qr/hunter2/, '  without the secret');
	$sink->clear_faults;
	$node->safe_psql('postgres', q{ALTER SYSTEM RESET courier.allow_private_endpoints; SELECT pg_reload_conf()});
}

# --- only a superuser sets the policy -------------------------------------------------------------
for my $sql ("SET courier.allow_private_endpoints = on", "SET courier.allowed_hosts = '127.0.0.1/32'",
	"SELECT set_config('courier.allow_private_endpoints', 'on', false)",
	"ALTER SYSTEM SET courier.allow_private_endpoints = on", "ALTER SYSTEM SET courier.allowed_hosts = '0.0.0.0/0'",
	"ALTER ROLE eve SET courier.allow_private_endpoints = on", "ALTER DATABASE postgres SET courier.allowed_hosts = '0.0.0.0/0'")
{
	my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE eve; $sql");
	isnt($rc, 0, "eve cannot: $sql");
}
my ($rc, $out, $err) = $node->psql('postgres', q{SET ROLE eve; SHOW courier.allowed_hosts});
isnt($rc, 0, 'eve cannot read the allowed hosts either');
is($node->safe_psql('postgres', q{SELECT setting FROM pg_settings WHERE name = 'courier.allow_private_endpoints'}), 'off',
	'the policy is still the default');

# --- what an operator checks ----------------------------------------------------------------------
is($node->safe_psql('postgres', q{SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolname IN ('eve', 'alice') AND rolsuper}),
	'', 'no role became superuser');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no process was terminated by a signal');
# (a dropped outbox is read until the worker's next catalog refresh: those "does not exist" lines
# are the broken-outbox reporting's business, counted apart)
my $dropped = () = $log =~ /WARNING: .*relation "[^"]+" does not exist/g;
my $warnings = (() = $log =~ /WARNING/g) - $dropped;
diag("WARNING lines about outboxes dropped under the worker: $dropped");
cmp_ok($warnings, '<', 20, "no WARNING flood ($warnings lines)");

# other roles are still delivered (public policy honoured for them too)
$node->safe_psql('postgres', q{ALTER SYSTEM SET courier.allowed_hosts = '127.0.0.1/32'; SELECT pg_reload_conf()});
# (a new session after the reload sees the list; the first ones may still be racing the reload)
ok(CourierTest::wait_until(sub {
	my ($r) = $node->psql('postgres', qq{SET ROLE alice; SELECT courier.create_outbox('alice.events', 'http://127.0.0.1:$port/alice')});
	$r == 0 }, timeout => 10, what => 'create with the address listed'), 'with the address listed, alice can create her outbox');
$node->safe_psql('postgres', q{SET ROLE alice; SELECT courier.send('alice.events', '{"n": 1}', 'a')});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'alice.events') == 0 }, timeout => 30, what => 'alice delivered'),
	'alice\'s events are delivered');

# --- a proxy named in the server's environment is not used (it would connect on our behalf) ------
# Private endpoints allowed, so that a connection to a proxy on 127.0.0.1 would not be refused.
$node->safe_psql('postgres', q{ALTER SYSTEM RESET courier.allowed_hosts;
	ALTER SYSTEM SET courier.allow_private_endpoints = on});
{
	local $ENV{http_proxy} = $sink->url;
	local $ENV{ALL_PROXY} = $sink->url;
	$node->restart;
}
my $requests_before = $sink->stats->{requests};
$node->safe_psql('postgres', q{SET ROLE alice; SELECT courier.create_outbox('alice.proxied', 'http://proxied.invalid/x');
	SELECT courier.send('alice.proxied', '{}', 'p')});
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', q{SELECT count(*) FROM alice.proxied WHERE last_error IS NOT NULL}) eq '1' },
	timeout => 30, what => 'attempt'), 'the worker tried the endpoint itself (the name does not resolve)');
is($sink->stats->{requests}, $requests_before, 'nothing went through the proxy named in the environment');

$node->stop;
$sink->stop;
done_testing();
