# CourierTest — shared helpers for pg_courier's TAP tests.
#
#   use CourierTest;
#   my $node = CourierTest::node('primary', conf => ["courier.poll_interval = '200ms'"]);
#   CourierTest::wait_until(sub { $node->safe_psql('postgres', 'select 1') eq '1' },
#                           what => 'server answers', timeout => 30) or BAIL_OUT(...);
#
# Every wait is a condition with a deadline: tests never sleep and hope.
package CourierTest;

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

# node(NAME, conf => [LINES], databases => 'postgres', create => 1, default_policy => 0): a started
# cluster with pg_courier preloaded, the extension created in 'postgres' unless create => 0.  The
# local sink listens on 127.0.0.1, which the endpoint policy refuses by default: test clusters allow
# private endpoints unless default_policy => 1 (the SSRF tests).
sub node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	my $dbs = $opt{databases} // 'postgres';
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'pg_courier'",
		"courier.databases = '$dbs'",
		"courier.poll_interval = '500ms'",
		"max_worker_processes = 32",
		"log_line_prefix = '%m [%p] %q%a '",
		($opt{default_policy} ? () : ("courier.allow_private_endpoints = on")),
		@{ $opt{conf} // [] }) . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION pg_courier') unless defined $opt{create} && !$opt{create};
	return $node;
}

# wait_until(CODE, timeout => SECONDS, what => TEXT): poll CODE every 50 ms until it returns
# true; returns 1, or 0 at the deadline (with a diagnostic naming what was awaited).
sub wait_until
{
	my ($code, %opt) = @_;
	my $deadline = time + ($opt{timeout} // 60);
	while (time < $deadline)
	{
		return 1 if $code->();
		sleep 0.05;
	}
	diag('timed out waiting for ' . ($opt{what} // 'a condition'));
	return 0;
}

# pending(NODE, OUTBOX, DB): rows still waiting in an outbox.
sub pending
{
	my ($node, $outbox, $db) = @_;
	return $node->safe_psql($db // 'postgres', "SELECT count(*) FROM $outbox");
}

# worker_pid(NODE, DB): pid of the database's delivery worker, '' when none runs.
sub worker_pid
{
	my ($node, $db) = @_;
	$db //= 'postgres';
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_courier worker' AND datname = '$db'");
}

# tenants(NODE, NAME...): for each name a LOGIN role that owns a schema of that name and nothing
# else: the attacker and its neighbours in the attack tests.
sub tenants
{
	my ($node, @names) = @_;
	$node->safe_psql('postgres', join("\n", map { "CREATE ROLE $_ LOGIN; CREATE SCHEMA $_ AUTHORIZATION $_;" } @names));
}

# no_takeover(NODE): what an operator checks after an attack: no role became superuser (but the
# bootstrap superuser), and no server process was terminated by a signal.
sub no_takeover
{
	my ($node) = @_;
	is($node->safe_psql('postgres', q{SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolsuper AND oid <> 10}), '',
		'no role became superuser');
	unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process was terminated by a signal');
}

1;
