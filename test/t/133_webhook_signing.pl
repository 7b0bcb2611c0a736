# Standard Webhooks signatures: every request verified with the official npm "standardwebhooks"
# package (Webhook.verify), single and batched, across retries (same webhook-id, fresh timestamp)
# and during rotation (two secrets: a receiver holding either accepts); the secret is never shown.
use strict;
use warnings;

use MIME::Base64;
use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('signing', conf => ["courier.poll_interval = '100ms'"]);
$sink->config(record_raw => JSON::PP::true);
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200';
my $old = 'whsec_' . encode_base64('0123456789abcdef0123456789abcdef', '');
my $new = 'whsec_' . encode_base64(join('', map { chr(200 + $_) } 0 .. 39), '');

my $other = 'whsec_' . encode_base64('z' x 24, '');

# Refusals never quote the secret.
my ($ret, $out, $err) = $node->psql('postgres',
	qq{SELECT courier.create_outbox('bad', '${\ $sink->url('/x') }', 'cloudevents', '{"signing_secret": "whsec_c2hvcnQ="}')});
like($err, qr/outbox option "signing_secret" is not a valid secret/, 'a short secret is refused');
unlike($err, qr/c2hvcnQ/, '... without quoting it');
($ret, $out, $err) = $node->psql('postgres',
	qq{SELECT courier.create_outbox('bad', '${\ $sink->url('/x') }', 'cloudevents', '{"signing_secret": ["$other", "nope"]}')});
like($err, qr/secret 2 is not a valid secret/, 'a bad secret in an array is named by its place');
unlike($err, qr/\Q$other\E|nope/, '... without quoting any secret');

# One event per request, with retries: the first two requests fail.
$sink->faults({ status => { code => 503, count => 2 } });
# (the test cluster logs every statement: not these, which carry the secret; see doc/outbox.md)
$node->safe_psql('postgres', qq{SET log_statement = 'none'; SELECT courier.create_outbox('single', '${\ $sink->url('/single') }', 'cloudevents',
	'{$fast, "signing_secret": "$old"}')});
$node->safe_psql('postgres', q{SELECT courier.send('single', jsonb_build_object('n', i), 'k', 'orders') FROM generate_series(1, 5) i});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'single') == 0 }, timeout => 60, what => 'single drained'),
	'single: delivered');
my $v = $sink->judge('webhooks', $old);
is($v->{requests}, 7, 'single: five events, two retried');
is(scalar @{ $v->{failures} }, 0, 'single: every request verifies with the secret (retries included)')
  or diag explain $v->{failures};
my %per_id;
$per_id{$_}++ for @{ $v->{ids} };
is(scalar(keys %per_id), 5, 'single: a retried event keeps its webhook-id (five ids over seven requests)');
my %event_ids = map { $_ => 1 } @{ $sink->ids };
ok(!(grep { !$event_ids{$_} } keys %per_id), 'single: the webhook-id is the event id');
my $wrong = $sink->judge('webhooks', 'whsec_' . encode_base64('x' x 32, ''));
is(scalar @{ $wrong->{failures} }, $wrong->{requests}, 'a receiver with another secret refuses every request');

# Batches, rotating: signed with both secrets; receivers with either one accept.
$sink->clear_faults;
$sink->reset;
$node->safe_psql('postgres', qq{SET log_statement = 'none'; SELECT courier.create_outbox('batched', '${\ $sink->url('/batched') }', 'cloudevents',
	'{$fast, "batch": true, "signing_secret": ["$old", "$new"]}')});
$node->safe_psql('postgres', q{SELECT courier.send('batched', jsonb_build_object('n', i), 'k' || (i % 3), 'orders') FROM generate_series(1, 50) i});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'batched') == 0 }, timeout => 60, what => 'batched drained'),
	'batched: delivered');
for my $secret ($old, $new)
{
	$v = $sink->judge('webhooks', $secret);
	cmp_ok($v->{requests}, '>', 0, 'batched: requests recorded');
	is(scalar @{ $v->{failures} }, 0, 'batched: every request verifies with either secret of the rotation')
	  or diag explain $v->{failures};
}
my $sigs = (grep { $_->{headers}{'webhook-signature'} } @{ $sink->raw })[0]{headers}{'webhook-signature'};
like($sigs, qr/^v1,\S+ v1,\S+$/, 'batched: two space-separated signatures');

# The secret is nowhere to be seen.
my $seen = $node->safe_psql('postgres', q{SELECT courier.metrics()}) .
  $node->safe_psql('postgres', q{SELECT string_agg(s::text, ' ') FROM courier.outbox_stats s}) .
  $node->safe_psql('postgres', q{SELECT string_agg(b::text, ' ') FROM courier.breakers() b});
my ($old_b64, $new_b64) = map { substr($_, 6) } ($old, $new);
unlike($seen, qr/\Q$old_b64\E|\Q$new_b64\E/, 'no secret in metrics(), outbox_stats or breakers()');
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$old_b64\E|\Q$new_b64\E/, 'no secret in the server log');

done_testing();
