# TLS failures record why, in our words: a certificate no trusted CA signed, and one that does not
# name the host (the CA trusted through courier.ca_file).  The servers are openssl s_server with
# self-signed certificates; the endpoints are 127.0.0.1.
use strict;
use warnings;

use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use CourierTest;

plan skip_all => 'no openssl command' unless system('openssl version >/dev/null 2>&1') == 0;

my $dir = PostgreSQL::Test::Utils::tempdir;

# tls_server(CN, SAN): a self-signed certificate and an openssl s_server presenting it on 127.0.0.1
sub tls_server
{
	my ($name, @addext) = @_;
	my ($key, $cert) = map { File::Spec->catfile($dir, "$name-$_") } qw(key.pem cert.pem);
	system('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', $key, '-out', $cert,
		'-days', '2', '-subj', "/CN=$name", @addext) == 0 or die 'openssl req failed';
	chmod 0644, $cert;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my ($in, $out, $err) = ('', '', '');
	my $h = IPC::Run::start([ 'openssl', 's_server', '-quiet', '-accept', "127.0.0.1:$port",
		'-cert', $cert, '-key', $key, '-www' ], \$in, \$out, \$err);
	return ($h, $port, $cert);
}

# one that names 127.0.0.1 (only its CA is unknown), one that names example.org (trusted below,
# only the name is wrong): each failure has one cause, whatever order a TLS library checks them in
my ($server, $port) = tls_server('127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1');
my ($misnamed_server, $misnamed_port, $cert) = tls_server('example.org');

my $node = CourierTest::node('tls', conf => [ "courier.poll_interval = '100ms'" ]);
my $last_error = sub {
	my ($ob) = @_;
	return $node->safe_psql('postgres', "SELECT coalesce(max(last_error), '') FROM $ob");
};

$node->safe_psql('postgres', qq{SELECT courier.create_outbox('untrusted', 'https://127.0.0.1:$port/hook', 'cloudevents',
	'{"retry_base_ms": 100, "retry_max_ms": 200}')});
$node->safe_psql('postgres', q{SELECT courier.send('untrusted', '{}')});
ok(CourierTest::wait_until(sub { $last_error->('untrusted') ne '' }, timeout => 30, what => 'a TLS failure'),
	'the request failed');
is($last_error->('untrusted'),
	"TLS: the endpoint's certificate is not signed by a trusted CA (see courier.ca_file)",
	'an unknown CA is named as such');

# Trust example.org's certificate as a CA: now the host name is what is wrong.
$node->append_conf('postgresql.conf', "courier.ca_file = '$cert'");
$node->reload;
$node->safe_psql('postgres', qq{SELECT courier.create_outbox('misnamed', 'https://127.0.0.1:$misnamed_port/hook', 'cloudevents',
	'{"retry_base_ms": 100, "retry_max_ms": 200}')});
$node->safe_psql('postgres', q{SELECT courier.send('misnamed', '{}')});
ok(CourierTest::wait_until(sub { $last_error->('misnamed') ne '' }, timeout => 30, what => 'a TLS failure'),
	'the request failed');
is($last_error->('misnamed'), "TLS: the endpoint's certificate does not name its host",
	'a host name mismatch is named as such');

$_->kill_kill for $server, $misnamed_server;
done_testing();
