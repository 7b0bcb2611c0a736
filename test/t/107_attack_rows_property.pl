# Rows are untrusted input: a property test.  An outbox owner drops every NOT NULL, CHECK,
# primary key and default of its outboxes and writes random NULLs and extreme values into every
# column, interleaved with good rows on the same and other keys, in all three ways of sending
# (CloudEvents one per request, CloudEvents batches, Kafka REST v2), while another role's outbox
# delivers next to them.  What must hold:
#   - no backend is terminated by a signal, the worker keeps its pid, the log is not flooded;
#   - every good row is delivered exactly once, in per-key order, and the sink (which validates
#     CloudEvents strictly) rejects nothing;
#   - every bad row is either delivered as a valid event or in courier.dead_letters with a reason
#     naming its column; no row stays behind.
# The values are drawn from a seeded generator: the seed is printed; COURIER_PROPERTY_SEED=<n>
# repeats a run.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $seed = $ENV{COURIER_PROPERTY_SEED} // int(rand(1_000_000_000));
diag("seed $seed (COURIER_PROPERTY_SEED=$seed repeats this run)");

my $sink = CourierSink->start;
my $node = CourierTest::node('rows', conf => ["courier.poll_interval = '200ms'"]);
$sink->config(record_data => JSON::PP::true, order_field => 'n', id_field => 'id');
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200, "max_attempts": 3';

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	CREATE SCHEMA eve AUTHORIZATION eve;
	CREATE ROLE alice LOGIN;
	CREATE SCHEMA alice AUTHORIZATION alice;
});
my %outboxes = (
	'eve.ce1' => { short => 'c1', kafka => 0, url => $sink->url('/hook/ce1'), opts => "{$fast}" },
	'eve.ceb' => { short => 'cb', kafka => 0, url => $sink->url('/hook/ceb'),
		opts => "{$fast, \"batch\": true, \"batch_size\": 7}" },
	'eve.kfk' => { short => 'kf', kafka => 1, url => $sink->url('/kafka'),
		opts => "{$fast, \"topic\": \"orders\", \"batch_size\": 7}" },
);
my @attacked = sort keys %outboxes;
for my $ob (@attacked)
{
	my $o = $outboxes{$ob};
	my $format = $o->{kafka} ? 'kafka_rest_v2' : 'cloudevents';
	$node->safe_psql('postgres', qq{SET ROLE eve; SELECT courier.create_outbox('$ob', '$o->{url}', '$format', '$o->{opts}')});
	# the owner drops every constraint and default it can; what stays is what pg_courier requires of
	# an outbox it serves (doc/outbox.md): a unique index on id, here a nullable one (so ids can be
	# NULL), and pg_courier's triggers
	$node->safe_psql('postgres', qq{
		SET ROLE eve;
		DO \$\$
		DECLARE c record;
		BEGIN
			FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = '$ob'::regclass AND contype <> 'n' LOOP
				EXECUTE format('ALTER TABLE $ob DROP CONSTRAINT %I', c.conname);
			END LOOP;
			FOR c IN SELECT attname FROM pg_attribute WHERE attrelid = '$ob'::regclass AND attnum > 0 AND NOT attisdropped LOOP
				EXECUTE format('ALTER TABLE $ob ALTER COLUMN %I DROP NOT NULL, ALTER COLUMN %I DROP DEFAULT', c.attname, c.attname);
			END LOOP;
		END \$\$;
		CREATE UNIQUE INDEX ON $ob (id);
	});
	is($node->safe_psql('postgres', qq{
		SELECT (SELECT count(*) FROM pg_constraint WHERE conrelid = '$ob'::regclass) || '/' ||
		       (SELECT count(*) FROM pg_attribute WHERE attrelid = '$ob'::regclass AND attnum > 0 AND (attnotnull OR atthasdef))}),
		'0/0', "$ob: no constraint, NOT NULL or default left");
}
$node->safe_psql('postgres', qq{SET ROLE alice; SELECT courier.create_outbox('alice.clean', '${\ $sink->url('/hook/clean')}', 'cloudevents', '{$fast}')});

my $log_start = -s $node->logfile;
my $pid = CourierTest::worker_pid($node);
ok($pid, 'the worker runs');

# Mutations: [name, {column => SQL value}, fate, how].  A fate is 'deliver' or the column a dead
# letter's reason must name; a code ref decides per outbox.  Most values are written by INSERT, as
# any producer could; those pg_courier's triggers refuse (too large, a changed id) are written by the
# owner with the UPDATE trigger disabled for the moment (how => 'bypass'): an owner can always do
# that, or change a row in a trigger of its own that fires after ours.
my $huge = 1_100_000;    # over courier.max_payload_bytes (1 MB)
my @mutations = (
	[ 'topic other',       { topic => q{'alt.topic-1'} }, 'deliver' ],
	[ 'topic empty',       { topic => q{''} }, 'topic', 'bypass' ],
	[ 'topic control',     { topic => q{E'bad\x01topic\n"\\\\'} }, sub { $_[0]{kafka} ? 'topic' : 'deliver' } ],
	[ 'topic 300 chars',   { topic => q{repeat('t', 300)} }, sub { $_[0]{kafka} ? 'topic' : 'deliver' } ],
	[ 'topic huge',        { topic => "repeat('t', $huge)" }, 'topic', 'bypass' ],
	[ 'key empty',         { key => q{''} }, 'deliver' ],
	[ 'key control',       { key => q{%s || E'-\x01\n"\\\\'} }, 'deliver' ],
	[ 'key huge',          { key => "repeat('k', $huge)" }, 'key', 'bypass' ],
	[ 'key 2001 bytes',    { key => "repeat('k', 2001)" }, 'key', 'bypass' ],
	[ 'key 2000 bytes',    { key => "%s || repeat('k', 1998)" }, 'deliver' ],
	[ 'created_at NULL',   { created_at => 'NULL' }, 'deliver' ],
	[ 'created_at +inf',   { created_at => q{'infinity'} }, 'deliver' ],
	[ 'created_at -inf',   { created_at => q{'-infinity'} }, 'deliver' ],
	[ 'created_at 0001',   { created_at => q{'0001-01-01 00:00:00+00'} }, 'deliver' ],
	[ 'created_at 9999',   { created_at => q{'9999-12-31 23:59:59.999999+00'} }, 'deliver' ],
	[ 'created_at 10000',  { created_at => q{'10000-01-01 00:00:00+00'} }, 'deliver' ],
	[ 'created_at BC',     { created_at => q{'0044-03-15 12:00:00+00 BC'} }, 'deliver' ],
	[ 'payload NULL',      { payload => 'NULL' }, 'payload' ],
	[ 'payload null',      { payload => q{'null'} }, 'deliver' ],
	[ 'payload string',    { payload => q{to_jsonb(E'text \x01 \u00e9 "q" \\\\'::text)} }, 'deliver' ],
	[ 'payload array',     { payload => q{'[]'} }, 'deliver' ],
	[ 'payload number',    { payload => q{'-1.5e300'} }, 'deliver' ],
	[ 'payload deep',      { payload => q{(repeat('[', 500) || repeat(']', 500))::jsonb} }, 'deliver' ],
	[ 'headers array',     { headers => q{'[1, 2]'} }, 'headers' ],
	[ 'headers string',    { headers => q{'"x"'} }, 'headers' ],
	[ 'headers number',    { headers => q{'5'} }, 'headers' ],
	[ 'headers json null', { headers => q{'null'} }, 'deliver' ],
	[ 'headers odd',       { headers => q{'{"X-Ok": "1", "X-Bad": "a\nb", "Bad Name": "v", "Content-Length": "9", "X-Num": 5, "X-Null": null, "X-Ctl": "a\u0001b"}'} }, 'deliver' ],
	[ 'attempts NULL',     { attempts => 'NULL' }, 'deliver' ],
	[ 'attempts negative', { attempts => '-7' }, 'deliver' ],
	[ 'attempts huge',     { attempts => '2147483647' }, 'deliver' ],
	[ 'retry +inf',        { attempts => '1', next_attempt_at => q{'infinity'} }, 'deliver' ],
	[ 'retry -inf',        { attempts => '1', next_attempt_at => q{'-infinity'} }, 'deliver' ],
	[ 'retry NULL',        { attempts => '2', next_attempt_at => 'NULL' }, 'deliver' ],
	[ 'event_id NULL',     { event_id => 'NULL' }, 'event_id' ],
	[ 'id NULL',           { last_error => q{'make-id-null'} }, 'id' ],
	[ 'id negative',       { last_error => q{'make-id-negative'} }, 'id' ],
);

# Rows: every attacked outbox gets good and bad rows on a few keys, in transactions of ten that
# write to several outboxes at once; alice's outbox gets good rows in the same transactions.
my @columns = qw(event_id topic key payload headers created_at attempts next_attempt_at last_error);
srand($seed);    # (here: setting up nodes and sinks draws random numbers too)
my (@rows, @clean);
my $updates_allowed = sub { my ($ob, $on) = @_; "ALTER TABLE $ob " . ($on ? 'ENABLE' : 'DISABLE') . ' TRIGGER courier_outbox_update;' };
my $n = 0;
for my $batch (1 .. 40)
{
	my (@sql, @bypass, @batch_rows);
	for (1 .. 10)
	{
		my $ob = $attacked[ int(rand(@attacked)) ];
		my $o = $outboxes{$ob};
		my $key = rand() < 0.1 ? undef : "$o->{short}-k" . int(rand(4));
		$n++;
		my %v = (event_id => 'gen_random_uuid()', topic => 'NULL', key => defined $key ? "'$key'" : 'NULL',
			payload => "jsonb_build_object('n', $n)", headers => 'NULL', created_at => 'now()',
			attempts => '0', next_attempt_at => 'NULL', last_error => 'NULL');
		my $row = { outbox => $ob, n => $n, key => $key, mutation => 'good', fate => 'deliver' };
		if (rand() < 0.5)
		{
			my $m = $mutations[ int(rand(@mutations)) ];
			my %mv;
			while (my ($col, $val) = each %{ $m->[1] })
			{
				$mv{$col} = $col eq 'key' ? sprintf($val, "'$o->{short}'") : $val;
			}
			if (($m->[3] // '') eq 'bypass')
			{
				$v{last_error} = "'bypass-$n'";
				push @bypass, $updates_allowed->($ob, 0),
				  "UPDATE $ob SET " . join(', ', map { "$_ = $mv{$_}" } sort keys %mv) . ", last_error = NULL WHERE last_error = 'bypass-$n';",
				  $updates_allowed->($ob, 1);
			}
			else
			{
				@v{ keys %mv } = values %mv;
			}
			$row->{key} = undef if exists $m->[1]{key};    # (no order expectation on odd keys)
			$row->{mutation} = $m->[0];
			$row->{fate} = ref $m->[2] ? $m->[2]->($o) : $m->[2];
		}
		push @sql, "INSERT INTO $ob (" . join(', ', @columns) . ') VALUES (' . join(', ', map { $v{$_} } @columns)
		  . ') RETURNING id, event_id;';
		push @batch_rows, $row;
		push @sql, "SELECT courier.send('alice.clean', jsonb_build_object('n', $n), 'a-k' || ($n % 3));" if rand() < 0.3;
	}
	my @sends = grep { /courier\.send/ } @sql;
	my $out = $node->safe_psql('postgres', join("\n", 'BEGIN;', 'SET ROLE eve;',
		(map { /courier\.send/ ? ('RESET ROLE;', 'SET ROLE alice;', $_, 'RESET ROLE;', 'SET ROLE eve;') : $_ } @sql),
		@bypass,
		(map {; $updates_allowed->($_, 0), "UPDATE $_ SET id = NULL WHERE last_error = 'make-id-null';",
		       "UPDATE $_ SET id = -id WHERE last_error = 'make-id-negative' AND id > 0;", $updates_allowed->($_, 1) } @attacked),
		'COMMIT;'));
	my @lines = split /\n/, $out;
	for my $line (@lines)
	{
		if ($line =~ /^(\d+)\|(.*)$/)
		{
			my $row = shift @batch_rows;
			@$row{qw(id event_id)} = ($1, $2 eq '' ? undef : $2);
			push @rows, $row;
		}
		elsif ($line =~ /^[0-9a-f-]{36}$/)
		{
			push @clean, $line;
		}
	}
	is(scalar(@batch_rows), 0, "batch $batch: every row written") or last;
}
my %count;
$count{ $_->{fate} }++ for @rows;
diag('rows: ' . join(', ', map { "$_ $count{$_}" } sort keys %count) . '; clean rows: ' . scalar(@clean));

# Everything leaves the outboxes: delivered, or moved to the dead letters.
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', 'SELECT ' . join(' + ', map { "(SELECT count(*) FROM $_)" } @attacked, 'alice.clean')) == 0 },
	timeout => 180, what => 'every outbox drained'), 'every outbox drains')
  or diag $node->safe_psql('postgres', join(' UNION ALL ', map {
	"SELECT '$_', id, event_id, attempts, left(last_error, 80) FROM $_" } @attacked));

# What the sink accepted (first receipts) and what went to the dead letters.
my %received;
my %order_last;
my $order_violations = 0;
for my $e (@{ $sink->events })
{
	next if $received{ $e->{id} }++;
	my $data = $e->{format} eq 'kafka' ? (ref $e->{data} eq 'HASH' ? $e->{data}{data} : undef) : $e->{data};
	next unless defined $e->{key} && ref $data eq 'HASH' && defined $data->{n};
	my $stream = "$e->{format}|$e->{key}";
	$order_violations++ if defined $order_last{$stream} && $data->{n} <= $order_last{$stream};
	$order_last{$stream} = $data->{n};
}
my (%dead_by_event, %dead_by_id);
for my $line (split /\n/, $node->safe_psql('postgres',
	q{SELECT outbox::text || '|' || COALESCE(outbox_id::text, '') || '|' || COALESCE(event_id::text, '') || '|' || COALESCE(last_error, '')
	    FROM courier.dead_letters}))
{
	my ($ob, $id, $event, $why) = split /\|/, $line, 4;
	$dead_by_event{$event} = $why if $event ne '';
	$dead_by_id{"$ob|$id"} = $why if $id ne '';
}

my @wrong;
for my $row (@rows)
{
	my $got = defined $row->{event_id} ? $received{ $row->{event_id} } // 0 : 0;
	my $dead = defined $row->{event_id} ? $dead_by_event{ $row->{event_id} } : $dead_by_id{"$row->{outbox}|$row->{id}"};
	my $what = "$row->{outbox} id $row->{id} ($row->{mutation})";
	if ($row->{fate} eq 'deliver')
	{
		push @wrong, "$what: received $got times, expected once" if $got != 1;
		push @wrong, "$what: dead-lettered ($dead)" if defined $dead;
	}
	else
	{
		push @wrong, "$what: delivered" if $got;
		push @wrong, "$what: not in the dead letters" unless defined $dead;
		push @wrong, "$what: dead letter reason '$dead' does not name $row->{fate}"
		  if defined $dead && $dead !~ /\b\Q$row->{fate}\E\b/;
	}
}
is(scalar(@wrong), 0, 'every good row delivered exactly once; every bad row delivered as a valid event or dead-lettered naming its column')
  or diag join("\n", @wrong[0 .. ($#wrong < 30 ? $#wrong : 29)]);
is(scalar(grep { ($received{$_} // 0) != 1 } @clean), 0, "the other role's outbox delivered every event exactly once");
is($order_violations, 0, 'per-key order held (CloudEvents and Kafka)');
my $stats = $sink->stats;
is($stats->{order_violations}, 0, "per-key order held (the sink's own check)");
is(join(',', grep { !/^2\d\d$/ } sort keys %{ $stats->{status_counts} }), '', 'the sink rejected no request (every event it got was valid)')
  or diag explain $stats->{status_counts};

# What an operator cares about.
my $log = slurp_file($node->logfile, $log_start);
unlike($log, qr/terminated by signal/, 'no process was terminated by a signal');
is(CourierTest::worker_pid($node), $pid, 'the worker did not restart');
my @warnings = grep { /WARNING:/ } split /\n/, $log;
cmp_ok(scalar(@warnings), '<=', 2, 'no WARNING flood') or diag join("\n", @warnings[0 .. ($#warnings < 10 ? $#warnings : 9)]);
is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.outbox_stats WHERE status <> 'ok'}), '0',
	'every outbox reports status ok');

$node->stop;
$sink->stop;
done_testing();
