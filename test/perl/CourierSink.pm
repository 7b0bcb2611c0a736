package CourierSink;
# Perl client for test/sink/sink.js (the pg_courier test sink) for TAP tests. Core modules only.
#
#   my $sink = CourierSink->start(partitions => 4);
#   ... point pg_courier at $sink->url('/hook') or $sink->url('/kafka') ...
#   ok($sink->wait_for(sub { $_[0]->stats->{unique} >= 100 }, timeout => 30, what => '100 events'));
#   $sink->stop;
#
# See test/sink/README.md for the HTTP API behind each method.
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempfile);
use HTTP::Tiny;
use IO::Select;
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

our $VERSION = '1.0';

# The module lives in test/perl; the repository root is two levels up.
my $ROOT = abs_path(dirname(abs_path(__FILE__)) . '/../..');
my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

sub start {
    my ($class, %o) = @_;
    my $script = "$ROOT/test/sink/sink.js";
    die "CourierSink: $script not found\n" unless -f $script;
    my $node = $o{node} // $ENV{COURIER_SINK_NODE} // 'node';
    my $host = $o{host} // '127.0.0.1';
    my @args = ('--host', $host, '--port', $o{port} // 0, '--control-port', $o{control_port} // 0,
                '--exit-on-stdin-eof');
    push @args, '--partitions', $o{partitions} if defined $o{partitions};
    push @args, '--log-file', $o{log_file} if defined $o{log_file};
    push @args, '--verbose' if $o{verbose};

    # stderr goes to a temp file: never blocks the sink, and is shown if startup fails.
    my ($errfh, $errfile) = tempfile('courier-sink-XXXXXX', TMPDIR => 1, UNLINK => 1);
    pipe(my $out_r, my $out_w) or die "CourierSink: pipe: $!";
    # The sink's stdin is a pipe we hold open: if this process dies (even by SIGKILL) the sink
    # sees EOF and exits instead of lingering. Perl marks these fds close-on-exec, so programs we
    # spawn later (postgres) do not inherit the write end.
    pipe(my $in_r, my $in_w) or die "CourierSink: pipe: $!";
    my $pid = fork() // die "CourierSink: fork: $!";
    if ($pid == 0) {
        close $out_r; close $in_w;
        open(STDIN, '<&', $in_r) or POSIX::_exit(126);
        open(STDOUT, '>&', $out_w) or POSIX::_exit(126);
        open(STDERR, '>&', $errfh) or POSIX::_exit(126);
        exec($node, $script, @args) or do { print STDERR "exec $node: $!\n"; POSIX::_exit(127) };
    }
    close $out_w; close $in_r;

    my $self = bless { pid => $pid, owner => $$, host => $host, out => $out_r, in => $in_w,
                       errfile => $errfile, errfh => $errfh,
                       http => HTTP::Tiny->new(keep_alive => 1, timeout => $o{http_timeout} // 60,
                                               agent => 'CourierSink/1.0') }, $class;
    my ($buf, $deadline) = ('', time + ($o{start_timeout} // 10));
    my $sel = IO::Select->new($out_r);
    until ($buf =~ /^SINK LISTENING (\d+)$/m && $buf =~ /^SINK CONTROL (\d+)$/m) {
        my $left = $deadline - time;
        last if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($out_r, $buf, 4096, length $buf);
        last unless $n;    # EOF: the sink exited
    }
    ($self->{port}) = $buf =~ /^SINK LISTENING (\d+)$/m;
    ($self->{control_port}) = $buf =~ /^SINK CONTROL (\d+)$/m;
    unless ($self->{port} && $self->{control_port}) {
        $self->stop;
        die "CourierSink: sink did not start (it exited, or no port lines within the deadline); stdout: '$buf'; stderr:\n" . $self->stderr_text;
    }
    return $self;
}

sub port         { $_[0]{port} }
sub control_port { $_[0]{control_port} }
sub pid          { $_[0]{pid} }
sub url          { my ($s, $path) = @_; "http://$s->{host}:$s->{port}" . ($path // '') }
sub control_url  { my ($s, $path) = @_; "http://$s->{host}:$s->{control_port}" . ($path // '') }

# Everything the sink wrote to stderr so far (diagnostics for failing tests).
sub stderr_text {
    my $s = shift;
    open(my $fh, '<', $s->{errfile}) or return '';
    local $/;
    my $t = <$fh>;
    return $t // '';
}

sub _esc { my $v = shift; $v =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge; $v }

# One control request; dies with the response on any non-2xx (a test tool must not hide errors).
sub _ctl {
    my ($s, $method, $path, $body) = @_;
    my %opt;
    if (defined $body) {
        $opt{content} = $JSON->encode($body);
        $opt{headers} = { 'Content-Type' => 'application/json' };
    }
    my $r = $s->{http}->request($method, $s->control_url($path), \%opt);
    die "CourierSink: $method $path: $r->{status} $r->{reason}: $r->{content}\n" unless $r->{success};
    return length($r->{content} // '') ? $JSON->decode($r->{content}) : undef;
}

sub stats    { $_[0]->_ctl(GET => '/_sink/stats') }
sub ids      { $_[0]->_ctl(GET => '/_sink/ids') }
sub requests { $_[0]->_ctl(GET => '/_sink/requests') }
sub raw      { $_[0]->_ctl(GET => '/_sink/raw') }

# judge(MODE, SECRET): run test/receivers/judge.js (the official CloudEvents SDK or Standard
# Webhooks verifier) over every raw request recorded (config record_raw); returns its verdict
# {requests, events, failures => [...], ids => [...]}.
sub judge {
    my ($s, $mode, $secret) = @_;
    my $node = $ENV{COURIER_SINK_NODE} // 'node';
    my @cmd = ($node, "$ROOT/test/receivers/judge.js", $mode, $s->control_url, defined $secret ? ($secret) : ());
    open(my $fh, '-|', @cmd) or die "CourierSink: cannot run judge.js: $!\n";
    my $out = do { local $/; <$fh> };
    close($fh) or die "CourierSink: judge.js failed (status $?)\n";
    return JSON::PP::decode_json($out);
}
sub count    { my ($s, $id) = @_; $s->_ctl(GET => '/_sink/count?id=' . _esc($id))->{count} }
sub latency  { my ($s, $f) = @_; $s->_ctl(GET => '/_sink/latency' . (defined $f ? '?field=' . _esc($f) : '')) }
sub config   { my ($s, %h) = @_; $s->_ctl(POST => '/_sink/config', \%h) }
sub reset    { $_[0]->_ctl(POST => '/_sink/reset') }
sub faults   { my ($s, $plan) = @_; $s->_ctl(POST => '/_sink/faults', $plan) }
sub clear_faults    { $_[0]->_ctl(DELETE => '/_sink/faults') }
sub stop_listening  { $_[0]->_ctl(POST => '/_sink/stop_listening') }
sub start_listening { $_[0]->_ctl(POST => '/_sink/start_listening') }

# All recorded events with seq >= from (default 1), fetched in pages of `limit` (default 10000).
sub events {
    my ($s, %o) = @_;
    my ($from, $limit, @all) = ($o{from} // 1, $o{limit} // 10000);
    while (1) {
        my $page = $s->_ctl(GET => "/_sink/events?from=$from&limit=$limit");
        push @all, @$page;
        last if @$page < $limit || $limit == 0;
        $from = $page->[-1]{seq} + 1;
    }
    return \@all;
}

# Poll $cond->($sink) every 50 ms until it returns true (=> 1) or the deadline passes (=> 0).
sub wait_for {
    my ($s, $cond, %o) = @_;
    my $timeout = $o{timeout} // 30;
    my $deadline = time + $timeout;
    while (1) {
        return 1 if $cond->($s);
        if (time >= $deadline) {
            warn "# CourierSink::wait_for: timed out after ${timeout}s waiting for " . ($o{what} // 'condition') . "\n";
            return 0;
        }
        sleep 0.05;
    }
}

# SIGTERM, then reap within 5 s (SIGKILL as a last resort so a test never hangs here).
sub stop {
    my $s = shift;
    return if !$s->{pid} || $s->{owner} != $$;    # a forked child must not stop its parent's sink
    my $pid = delete $s->{pid};
    kill 'TERM', $pid;
    my $deadline = time + 5;
    while (waitpid($pid, WNOHANG) == 0) {
        if (time >= $deadline) { kill 'KILL', $pid; waitpid($pid, 0); last }
        sleep 0.02;
    }
    close $s->{in} if $s->{in};
    close $s->{out} if $s->{out};
    delete @$s{qw(in out)};
    return 1;
}

sub DESTROY {
    my $s = shift;
    local ($?, $!, $@);
    $s->stop if $s->{pid} && $s->{owner} == $$;
}

1;
