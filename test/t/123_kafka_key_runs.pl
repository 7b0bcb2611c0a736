# Several events of one key in one request ("key runs"), under partial failures.
#
# Five keys and hundreds of events committed together, batch_size 50: a request carries runs of
# each key, in order, and two requests in flight never share a key.  When record k of a key is not
# written, k and the later records of the key that were not written are sent again, in order; the
# records the proxy wrote are never sent again.  The sink fails records as Kafka does (by default a
# failed record takes the later records of its partition in that request with it), so runs are
# cut in the middle.  Checked per variant, with seeded fault plans that end (count):
#   - Kafka REST v2, Confluent's answer (one entry per record), retriable 50003: every event
#     written exactly once, per key in commit order;
#   - Kafka REST v2, Redpanda's answer (one entry per partition; twelve keys so that requests
#     span partitions): a failed partition does not say which records failed, so the whole
#     request is sent again: every event present, the last occurrences per key in commit order
#     (at least once), records of the partitions that were written sent twice;
#   - Kafka REST v3 records:batch, 207 with failures: exactly once, in order;
#   - CloudEvents batches answered 503 (nothing written): exactly once, in order;
#   - CloudEvents batches written, then answered 500 (accept_then_fail): sent again whole; every
#     event present, last occurrences per key in commit order;
#   - a permanent 50002 on one event in the middle of its key's run (that record alone, as a
#     RecordTooLargeException is): the event is a dead letter; with on_dead_letter 'skip'
#     (default) the later events of its key are delivered, with 'block' those not written in its
#     own request, and those committed after it was refused, wait until the dead letter is
#     replayed, then follow it in order.
# And that requests really carried several events of one key (the sink numbers requests).
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start(partitions => 4);
my $node = CourierTest::node('key_runs', conf => [
	"courier.poll_interval = '100ms'",
	"courier.breaker_reset_ms = 300",
]);
$node->safe_psql('postgres',
	'CREATE TABLE sent (event_id uuid PRIMARY KEY, outbox text NOT NULL, key text NOT NULL, n int NOT NULL)');

# retry forever and fast: these variants are about order and duplicates, not about giving up
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200, "max_attempts": 0, "batch_size": 50';
# keys kr-a, kr-b, ...: with 4 partitions kr-a and kr-e share one in v2 (json keys), kr-b and kr-c in v3
my @keys = map { "kr-$_" } 'a' .. 'l';
my $nk = 5;    # keys used, but for the Redpanda variant
my $n_ob = 0;

sub q1 { $node->safe_psql('postgres', $_[0]) }
sub dead_count { q1("SELECT count(*) FROM courier.dead_letters WHERE outbox = '$_[0]'::regclass") }

# insert(OUTBOX, FROM, TO, KEYS): events n = FROM..TO in one transaction, key n % KEYS (default 5;
# 0: kr-a, 1: kr-b, ...), event ids md5('OUTBOX/n') (known before they are sent, for fault plans
# naming one event).
sub insert
{
	my ($ob, $from, $to, $keys) = @_;
	$keys //= $nk;
	q1(qq{WITH ins AS (
			INSERT INTO $ob (event_id, key, payload)
			SELECT md5('$ob/' || i)::uuid, (ARRAY['${\ join("','", @keys)}'])[1 + i % $keys], jsonb_build_object('n', i)
			  FROM generate_series($from, $to) i
			RETURNING event_id, key, (payload->>'n')::int AS n)
		  INSERT INTO sent SELECT event_id, '$ob', key, n FROM ins});
}
sub event_id { q1("SELECT md5('$_[0]/$_[1]')::uuid") }

# outbox(FORMAT, OPTIONS): a new outbox (and topic) on this sink; returns its name.
sub outbox
{
	my ($format, $opts) = @_;
	my $ob = 'kr' . ++$n_ob;
	my $url = $format eq 'cloudevents' ? $sink->url("/hook/$ob") : $sink->url('/kafka');
	q1(qq{SELECT courier.create_outbox('$ob', '$url', '$format', '{"topic": "t$ob", $fast$opts}')});
	return $ob;
}

sub drained
{
	my ($ob, $dead, $what) = @_;
	return CourierTest::wait_until(sub { CourierTest::pending($node, $ob) == 0 && dead_count($ob) == $dead },
		timeout => 60, what => $what);
}

# committed(OUTBOX): {key => [event ids in commit order]}, leaving out the ids in %skip
sub committed
{
	my ($ob, %skip) = @_;
	my %c;
	for (split /\n/, q1("SELECT key || ' ' || event_id FROM sent WHERE outbox = '$ob' ORDER BY n"))
	{
		my ($k, $id) = split / /;
		push @{ $c{$k} }, $id unless $skip{$id};
	}
	return \%c;
}

# received(EVENTS): {key => [event ids in receipt order]}, every receipt
sub received
{
	my ($events) = @_;
	my %r;
	push @{ $r{ $_->{key} } }, $_->{id} for @$events;
	return \%r;
}

# last_occurrences(EVENTS): {key => [event ids ordered by their last receipt]}
sub last_occurrences
{
	my ($events) = @_;
	my (%last, %key);
	for my $i (0 .. $#$events) { $last{ $events->[$i]{id} } = $i; $key{ $events->[$i]{id} } = $events->[$i]{key} }
	my %r;
	push @{ $r{ $key{$_} } }, $_ for sort { $last{$a} <=> $last{$b} } keys %last;
	return \%r;
}

# runs(EVENTS): how many requests carried two or more events of one key, and the longest such run
sub runs
{
	my ($events) = @_;
	my (%per, %multi);
	my $longest = 0;
	for my $e (@$events)
	{
		my $c = ++$per{"$e->{req}\0$e->{key}"};
		$multi{ $e->{req} } = 1 if $c >= 2;
		$longest = $c if $c > $longest;
	}
	return (scalar(keys %multi), $longest);
}

# first_difference(GOT, WANT): for a failing comparison, the first key and position that differ
sub first_difference
{
	my ($got, $want) = @_;
	for my $k (sort keys %$want)
	{
		my ($g, $w) = ($got->{$k} // [], $want->{$k});
		for my $i (0 .. ($#$w > $#$g ? $#$w : $#$g))
		{
			my ($x, $y) = ($g->[$i] // '(none)', $w->[$i] // '(none)');
			return "key $k, position $i: got $x, want $y (got " . scalar(@$g) . ', want ' . scalar(@$w) . ')' if $x ne $y;
		}
	}
	return 'keys differ: ' . join(',', sort keys %$got);
}

sub runs_ok
{
	my ($name, $events) = @_;
	my ($multi, $longest) = runs($events);
	my %keys_of;
	$keys_of{ $_->{req} }{ $_->{key} }++ for @$events;
	my %hist;
	$hist{ scalar keys %{ $keys_of{$_} } }++ for keys %keys_of;
	note("$name: " . scalar(keys %keys_of) . ' requests written; by number of keys: '
		. join(', ', map { "$_ keys: $hist{$_}" } sort keys %hist));
	cmp_ok($multi, '>', 0, "$name: requests carried several events of one key ($multi such requests, longest run $longest)");
}

# exactly_once(NAME, OUTBOX, SKIP...): each committed event (but SKIP) written exactly once, per key in commit order
sub exactly_once
{
	my ($name, $ob, @skip) = @_;
	my $events = $sink->events;
	my $want = committed($ob, map { $_ => 1 } @skip);
	my $got = received($events);
	ok(eq_deeply_plain($got, $want), "$name: every event written exactly once, per key in commit order")
	  or diag first_difference($got, $want);
	my $stats = $sink->stats;
	is($stats->{duplicates}, 0, "$name: no record written twice");
	is($stats->{order_violations}, 0, "$name: the sink saw no order violation") or diag explain $stats->{violation_examples};
	return $events;
}

# at_least_once(NAME, OUTBOX): every committed event present; per key, the last occurrences in commit order
sub at_least_once
{
	my ($name, $ob) = @_;
	my $events = $sink->events;
	my $want = committed($ob);
	my $got = last_occurrences($events);
	ok(eq_deeply_plain($got, $want), "$name: every event present, per key the last occurrences in commit order")
	  or diag first_difference($got, $want);
	return $events;
}

sub eq_deeply_plain { JSON::PP->new->canonical->encode($_[0]) eq JSON::PP->new->canonical->encode($_[1]) }

# fresh(PLAN, CONFIG...): a clean sink state for the next variant
sub fresh
{
	my ($plan, %config) = @_;
	$sink->clear_faults;
	$sink->reset;
	$sink->config(order_field => 'n', record_data => JSON::PP::true, kafka_shape => 'confluent', %config);
	$sink->faults($plan) if $plan;
}

my $N = 600;
# CloudEvents faults hit whole requests: more events, more requests (at least 20 of 50) to hit
my $N_CE = 1000;

# --- Kafka REST v2, Confluent's answer: retriable per-record errors cut runs
{
	my $name = 'v2 Confluent 50003';
	fresh({ seed => 11, kafka_record_errors => { code => 50003, rate => 0.2, count => 40 } });
	my $ob = outbox('kafka_rest_v2', '');
	insert($ob, 1, $N);
	ok(drained($ob, 0, "$name: drained"), "$name: the outbox drains, no dead letters");
	my $stats = $sink->stats;
	is($stats->{faults_injected}{kafka_record_errors}, 40, "$name: the plan failed 40 records");
	my $events = exactly_once($name, $ob);
	runs_ok($name, $events);
	cmp_ok($stats->{faults_injected}{kafka_partition_failed} // 0, '>', 0,
		"$name: records failed behind an earlier record of their partition in the same request");
}

# --- Kafka REST v2, Redpanda's answer: a failed partition fails its whole batch, and the answer
# (one entry per partition) does not say which records were written: the request is sent again.
# Twelve keys, so that requests span partitions (the worker spreads keys over several requests),
# and a low rate, so that some partitions of a request fail and others are written.
{
	my $name = 'v2 Redpanda 50003';
	fresh({ seed => 12, kafka_record_errors => { code => 50003, rate => 0.05, count => 20 } }, kafka_shape => 'redpanda');
	my $ob = outbox('kafka_rest_v2', '');
	insert($ob, 1, $N, 12);
	ok(drained($ob, 0, "$name: drained"), "$name: the outbox drains, no dead letters");
	is($sink->stats->{faults_injected}{kafka_record_errors}, 20, "$name: the plan failed 20 partition batches");
	my $events = at_least_once($name, $ob);
	cmp_ok($sink->stats->{duplicates}, '>', 0, "$name: records of partitions that were written came again (the whole request was retried)");
	note("$name: " . $sink->stats->{duplicates} . " records written twice or more");
	is($sink->stats->{order_violations}, 0, "$name: first receipts per key in commit order too");
	runs_ok($name, $events);
}

# --- Kafka REST v3 records:batch: 207 with failures
{
	my $name = 'v3 50003';
	fresh({ seed => 13, kafka_record_errors => { code => 50003, rate => 0.2, count => 40 } });
	my $ob = outbox('kafka_rest_v3', '');
	insert($ob, 1, $N);
	ok(drained($ob, 0, "$name: drained"), "$name: the outbox drains, no dead letters");
	my $stats = $sink->stats;
	is($stats->{faults_injected}{kafka_record_errors}, 40, "$name: the plan failed 40 entries");
	cmp_ok($stats->{status_counts}{207} // 0, '>', 0, "$name: the proxy answered 207");
	my $events = exactly_once($name, $ob);
	runs_ok($name, $events);
	cmp_ok($stats->{faults_injected}{kafka_partition_failed} // 0, '>', 0,
		"$name: entries failed behind an earlier entry of their partition in the same request");
}

# --- CloudEvents batches answered 503: nothing of such a request was written
{
	my $name = 'CloudEvents batch 503';
	fresh({ seed => 14, status => { code => 503, rate => 0.5, count => 6 } });
	my $ob = outbox('cloudevents', ', "batch": true');
	insert($ob, 1, $N_CE);
	ok(drained($ob, 0, "$name: drained"), "$name: the outbox drains, no dead letters");
	cmp_ok($sink->stats->{faults_injected}{status} // 0, '>', 0, "$name: requests were answered 503");
	my $events = exactly_once($name, $ob);
	runs_ok($name, $events);
}

# --- CloudEvents batches written, then answered 500: sent again whole (at least once)
{
	my $name = 'CloudEvents batch accept_then_fail';
	fresh({ seed => 15, accept_then_fail => { code => 500, rate => 0.5, count => 6 } });
	my $ob = outbox('cloudevents', ', "batch": true');
	insert($ob, 1, $N_CE);
	ok(drained($ob, 0, "$name: drained"), "$name: the outbox drains, no dead letters");
	cmp_ok($sink->stats->{faults_injected}{accept_then_fail} // 0, '>', 0, "$name: written requests were answered 500");
	my $events = at_least_once($name, $ob);
	cmp_ok($sink->stats->{duplicates}, '>', 0, "$name: their events came again");
	runs_ok($name, $events);
}

# --- a permanent error (50002) on one event in the middle of its key's run.  Scope record: a
# RecordTooLargeException is the record's own (the producer checks it before batching), the
# later records of its partition are written.
my $M = 300;
my $target_n = 101;    # key kr-b (101 % 5 = 1), the 21st of its 60 events
my @later_n = grep { $_ % $nk == 1 && $_ > $target_n } 1 .. $M;
my @early_n = grep { $_ % $nk == 1 && $_ < $target_n } 1 .. $M;
{
	my $name = '50002, on_dead_letter skip';
	my $ob = outbox('kafka_rest_v2', '');
	my $target = event_id($ob, $target_n);
	fresh({ kafka_record_errors => { code => 50002, count => 1, scope => 'record', ids => [$target] } });
	insert($ob, 1, $M);
	ok(drained($ob, 1, "$name: drained"), "$name: the outbox drains");
	is(q1("SELECT event_id || ' ' || blocking FROM courier.dead_letters WHERE outbox = '$ob'::regclass"), "$target false",
		"$name: exactly the refused event is a dead letter, not blocking");
	like(q1("SELECT last_error FROM courier.dead_letters WHERE outbox = '$ob'::regclass"), qr/50002.*not retriable/,
		"$name: the reason says it is not retriable");
	my $events = exactly_once($name, $ob, $target);
	my @later = grep { $_->{key} eq 'kr-b' && $_->{data}{n} > $target_n } @$events;
	is_deeply([ map { $_->{data}{n} } @later ], \@later_n, "$name: every later event of its key was delivered, in order");
	runs_ok($name, $events);
}
{
	my $name = '50002, on_dead_letter block';
	my $ob = outbox('kafka_rest_v2', ', "on_dead_letter": "block"');
	my $target = event_id($ob, $target_n);
	fresh({ kafka_record_errors => { code => 50002, count => 1, scope => 'record', ids => [$target] } });
	insert($ob, 1, $M);
	ok(CourierTest::wait_until(sub {
		dead_count($ob) == 1 && q1("SELECT count(*) FROM $ob WHERE key <> 'kr-b'") == 0 }, timeout => 60,
		what => "$name: other keys drained"), "$name: the refused event is a dead letter, the other keys drain");
	is(q1("SELECT event_id || ' ' || blocking FROM courier.dead_letters WHERE outbox = '$ob'::regclass"), "$target true",
		"$name: it blocks its key");
	# more events of every key, committed after the refusal (so none can be in its request): the
	# other keys' are delivered, which also shows the worker had every chance to send kr-b's
	insert($ob, $M + 1, $M + 2 * $nk);
	my @more_n = grep { $_ % $nk == 1 } $M + 1 .. $M + 2 * $nk;
	my @waiting_n = (@later_n, @more_n);
	ok(CourierTest::wait_until(sub { q1("SELECT count(*) FROM $ob WHERE key <> 'kr-b'") == 0 }, timeout => 60,
		what => "$name: later events of other keys"), "$name: events of other keys committed later are delivered");
	my $events = $sink->events;
	my @early = grep { $_->{key} eq 'kr-b' && $_->{data}{n} < $target_n } @$events;
	is_deeply([ map { $_->{data}{n} } @early ], \@early_n, "$name: the events before it were delivered, in order");
	# the later events of its key written in the refused event's own request cannot be unwritten;
	# those are a prefix of the later events, from one request: every other later event waits
	my @after = grep { $_->{key} eq 'kr-b' && $_->{data}{n} > $target_n } @$events;
	my %reqs = map { $_->{req} => 1 } @after;
	note("$name: " . scalar(@after) . ' later events of its key were written in its request, '
		. (@waiting_n - @after) . ' wait');
	ok(keys(%reqs) <= 1, "$name: later events of the key delivered at all came in one request (the refused event's run)");
	is_deeply([ map { $_->{data}{n} } @after ], [ @later_n[ 0 .. $#after ] ], "$name: they are the next ones, in order");
	is(CourierTest::pending($node, $ob), scalar(@waiting_n) - scalar(@after),
		"$name: the other later events of its key wait (among them " . scalar(@more_n) . ' committed after the refusal)');

	# replayed, the dead letter goes first, then the waiting events in order
	my $seq = @$events ? $events->[-1]{seq} : 0;
	is(q1("SELECT courier.replay_dead_letters('$ob')"), '1', "$name: the dead letter is replayed");
	ok(drained($ob, 0, "$name: drained after the replay"), "$name: after the replay the key drains");
	my @tail = grep { $_->{key} eq 'kr-b' } @{ $sink->events(from => $seq + 1) };
	is_deeply([ map { $_->{data}{n} } @tail ], [ $target_n, @waiting_n[ scalar(@after) .. $#waiting_n ] ],
		"$name: the replayed event first, then the waiting ones, each once, in order");
	is($sink->stats->{duplicates}, 0, "$name: no record written twice");
}

is($sink->stats->{internal_errors}, 0, 'the sink had no internal errors');
$sink->stop;
$node->stop;
done_testing();
