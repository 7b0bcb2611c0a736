# One role cannot stall another through the producer registry.
#
# A transaction of alice writes keyed events to more outboxes than a registry slot remembers
# (COURIER_SLOT_OUTBOXES = 4) and stays open.  Past that bound the registry remembers the owners
# of the further outboxes: only those owners' outboxes are held.  bob's keyed events (even with the
# same key string) keep flowing; rows of alice's overflowed outbox committed meanwhile with a
# higher id wait, and arrive after alice's in id order once she commits.  A SECURITY DEFINER
# function of carol's that alice's transaction calls writes carol's table: carol's outboxes are
# held too, because the registry records the owner of the table written, not the role writing.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
$sink->config(record_data => JSON::PP::true);
my $node = CourierTest::node('tenancy_stall');
my $url = $sink->url('/hook');

$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE ROLE carol LOGIN;
	CREATE SCHEMA alice AUTHORIZATION alice;
	CREATE SCHEMA bob AUTHORIZATION bob;
	CREATE SCHEMA carol AUTHORIZATION carol;
	GRANT USAGE ON SCHEMA carol TO alice;
	GRANT USAGE ON SCHEMA alice TO carol;
});
$node->safe_psql('postgres', join("\n", 'SET ROLE alice;',
	map { "SELECT courier.create_outbox('alice.a$_', '$url');" } 1 .. 5));
$node->safe_psql('postgres', qq{
	SET ROLE bob;
	SELECT courier.create_outbox('bob.b1', '$url');
	SET ROLE carol;
	SELECT courier.create_outbox('carol.c1', '$url');
	CREATE FUNCTION carol.poke(who text) RETURNS void LANGUAGE sql SECURITY DEFINER
		SET search_path = pg_catalog
		AS \$\$ SELECT courier.send('carol.c1', pg_catalog.jsonb_build_object('ob', 'c1', 'who', who), 'K') \$\$;
});

# received(OUTBOX, KEY): who sent the events of OUTBOX with KEY, in arrival order
sub received
{
	my ($ob, $key) = @_;
	return [ map { $_->{data}{who} }
		  grep { ($_->{key} // '') eq $key && ($_->{data}{ob} // '') eq $ob } @{ $sink->events(from => 1) } ];
}

sub send_sql
{
	my ($ob, $who, $key) = @_;
	my $schema = { a => 'alice', b => 'bob', c => 'carol' }->{ substr($ob, 0, 1) };
	return qq{SELECT courier.send('$schema.$ob', '{"ob": "$ob", "who": "$who"}', '$key');};
}

# alice's long transaction: 5 outboxes of hers (a5 overflows the slot), then carol's c1 through
# carol's SECURITY DEFINER function (another owner past the bound)
my $a = $node->background_psql('postgres');
$a->query_safe(q{SET ROLE alice});
$a->query_safe(q{BEGIN});
$a->query_safe(send_sql("a$_", 'A', 'K')) for 1 .. 5;
$a->query_safe(q{SELECT carol.poke('A')});

# later rows with higher ids on the same key, committed while alice's transaction is open
$node->safe_psql('postgres', 'SET ROLE alice; ' . send_sql('a5', 'C', 'K') . send_sql('a1', 'C', 'K'));
$node->safe_psql('postgres', 'SET ROLE carol; ' . send_sql('c1', 'D', 'K'));
# bob's other outbox, same key string and another: must flow
$node->safe_psql('postgres', 'SET ROLE bob; ' . send_sql('b1', 'B', 'K') . send_sql('b1', 'B', 'M'));

ok($sink->wait_for(sub { @{ received('b1', 'K') } == 1 && @{ received('b1', 'M') } == 1 },
		timeout => 30, what => "bob's b1 events"),
	"bob's keyed events flow while alice's transaction over 6 outboxes is open");
is_deeply(received('a5', 'K'), [], "alice's overflowed outbox: the later row waits for her open one");
is_deeply(received('a1', 'K'), [], "alice's recorded outbox: the later row waits for her open one");
is_deeply(received('c1', 'K'), [],
	"carol's outbox written through her SECURITY DEFINER function in alice's transaction waits too");
is(CourierTest::pending($node, 'alice.a5'), 1, 'the held a5 row is pending');

$a->query_safe(q{COMMIT});
ok($sink->wait_for(sub { @{ received('a5', 'K') } == 2 && @{ received('a1', 'K') } == 2 && @{ received('c1', 'K') } == 2 },
		timeout => 30, what => 'held events after commit'),
	'after alice commits, the held events arrive');
is_deeply(received('a5', 'K'), [ 'A', 'C' ], 'a5: id order, not commit order');
is_deeply(received('a1', 'K'), [ 'A', 'C' ], 'a1: id order, not commit order');
is_deeply(received('c1', 'K'), [ 'A', 'D' ], 'c1: id order, not commit order');

# A row with a lower id that commits late, in an overflowed outbox, after the owner changed:
# ALTER TABLE OWNER waits for writers, and the worker matches holds against the owner of now.
$node->safe_psql('postgres', q{ALTER TABLE alice.a5 OWNER TO carol; GRANT ALL ON alice.a5 TO alice});
$a->query_safe(q{BEGIN});
$a->query_safe(send_sql("a$_", 'A2', 'K')) for 1 .. 4;
$a->query_safe(send_sql('a5', 'A2', 'K'));
$node->safe_psql('postgres', 'SET ROLE alice; ' . send_sql('a5', 'E', 'K'));
$node->safe_psql('postgres', 'SET ROLE bob; ' . send_sql('b1', 'B2', 'K'));
ok($sink->wait_for(sub { @{ received('b1', 'K') } == 2 }, timeout => 30, what => "bob's second b1 event"),
	"bob's b1 flows");
is_deeply(received('a5', 'K'), [ 'A', 'C' ], 'a5 (now carol\'s): the later row waits for the open one');
$a->query_safe(q{COMMIT});
ok($sink->wait_for(sub { @{ received('a5', 'K') } == 4 }, timeout => 30, what => 'a5 after second commit'),
	'a5 delivered after the commit');
is_deeply(received('a5', 'K'), [ 'A', 'C', 'A2', 'E' ], 'a5: id order kept across the owner change');
$a->quit;

$node->stop;
$sink->stop;
done_testing();
