/*-------------------------------------------------------------------------
 *
 * shard_ring_plan.c
 *	  Where a consistent-hash ring's points go: balanced token allocation.
 *
 * The classic ring places each node's v virtual nodes at hash("node#i").
 * With v = 150 and 10 nodes the load of a node then has a standard deviation
 * of about 1/sqrt(150) = 8% of the mean, whatever the hash: only about one
 * ring in seven keeps all ten nodes within +-10% (this is a property of
 * random placement, not of a weak hash).  Engines that need balance
 * (Cassandra's token allocation, CASSANDRA-7032) therefore choose tokens
 * deliberately and persist them.  pg_courier does the same:
 *
 *	- a node's weight is its vnode count; its target is weight / total of
 *	  the 2^64 hash space;
 *	- an added node gets `weight` points, each taking floor(2^64 / total)
 *	  hashes off the largest range of the currently most over-target node
 *	  (the new point is placed inside that range, so the range's lower part
 *	  moves to the new node and nothing else moves);
 *	- a removed node's ranges pass to the owner of the next point, as in a
 *	  classic ring, unless that owner would go over its target; those go to
 *	  the node furthest below target (nothing else moves, and removing the
 *	  node added last routes every key as before it was added);
 *	- the first node of an empty ring gets evenly spaced points starting at
 *	  hash(node).
 *
 * The result is deterministic for a given ring and change, keeps every node
 * within about one percent of its target, and keeps the consistent-hashing
 * guarantees exactly: adding a node moves keys only onto it, removing one
 * moves only its keys.  The points are stored in courier.ring_points, so
 * routing (here or in an application) needs only the stored points.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"

#include "pg_courier.h"
#include "shard.h"

PG_FUNCTION_INFO_V1(courier_ring_plan);

#define RING_SPACE	18446744073709551616.0	/* 2^64 as a double */
#define NODE_NAME_MAX	256

/* A point: its position, the length of the range it owns and its owner. */
typedef struct PlanPoint
{
	uint64		pos;
	uint64		arc;			/* hashes in (previous point, pos]; 0 = all 2^64 */
	int			node;
	int			next;			/* next point of the same node, -1 at the end */
} PlanPoint;

typedef struct PlanNode
{
	const char *name;
	int			weight;
	bool		wanted;			/* in the requested membership */
	bool		placed;			/* owns points in the ring being built */
	double		load;			/* hashes owned */
	int			head;			/* first point, -1 if none */
	int			largest;		/* its point with the largest arc, -1 if none */
} PlanNode;

typedef struct RingPlan
{
	PlanPoint  *pts;
	int			npts;
	int			cap;
	PlanNode   *nodes;
	int			nnodes;
	HTAB	   *by_name;		/* name -> node index */
} RingPlan;

typedef struct NameEntry
{
	char		name[NODE_NAME_MAX];
	int			index;
} NameEntry;

/*
 * arc_size
 *		An arc as a double (0 encodes the full ring of a lone point).
 */
static inline double
arc_size(uint64 arc)
{
	return arc == 0 ? RING_SPACE : (double) arc;
}

/*
 * plan_node
 *		Index of the named node, created on first sight.
 */
static int
plan_node(RingPlan *plan, const char *name)
{
	NameEntry  *e;
	bool		found;

	if (strlen(name) == 0 || strlen(name) >= NODE_NAME_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("node names must be 1 to %d bytes long", NODE_NAME_MAX - 1)));
	e = hash_search(plan->by_name, name, HASH_ENTER, &found);
	if (!found)
	{
		PlanNode   *n = &plan->nodes[plan->nnodes];

		memset(n, 0, sizeof(PlanNode));
		n->name = pstrdup(name);
		n->head = n->largest = -1;
		e->index = plan->nnodes++;
	}
	return e->index;
}

/*
 * plan_add_point
 *		Append a point (the array is sorted only at the end) and link it to
 *		its node.
 */
static void
plan_add_point(RingPlan *plan, uint64 pos, uint64 arc, int node)
{
	PlanPoint  *p;
	PlanNode   *n = &plan->nodes[node];

	if (plan->npts == plan->cap)
	{
		plan->cap *= 2;
		plan->pts = repalloc_huge(plan->pts, sizeof(PlanPoint) * plan->cap);
	}
	p = &plan->pts[plan->npts];
	p->pos = pos;
	p->arc = arc;
	p->node = node;
	p->next = n->head;
	n->head = plan->npts++;
	n->load += arc_size(arc);
	n->placed = true;
	if (n->largest < 0 || arc_size(arc) > arc_size(plan->pts[n->largest].arc))
		n->largest = p - plan->pts;
}

/*
 * plan_refresh_largest
 *		Find a node's largest arc again after it shrank.
 */
static void
plan_refresh_largest(RingPlan *plan, int node)
{
	PlanNode   *n = &plan->nodes[node];

	n->largest = -1;
	for (int i = n->head; i >= 0; i = plan->pts[i].next)
		if (n->largest < 0 || arc_size(plan->pts[i].arc) > arc_size(plan->pts[n->largest].arc))
			n->largest = i;
}

/*
 * plan_total_weight
 *		Sum of the weights of the nodes that own points.
 */
static double
plan_total_weight(RingPlan *plan)
{
	double		total = 0;

	for (int i = 0; i < plan->nnodes; i++)
		if (plan->nodes[i].placed)
			total += plan->nodes[i].weight;
	return total;
}

/*
 * cmp_pos_signed
 *		qsort: points by position as signed 64-bit (the stored order).
 */
static int
cmp_pos_signed(const void *a, const void *b)
{
	int64		pa = (int64) ((const PlanPoint *) a)->pos;
	int64		pb = (int64) ((const PlanPoint *) b)->pos;

	return pa < pb ? -1 : (pa > pb ? 1 : 0);
}

/*
 * plan_rebuild
 *		Replace the points by the given ones (relinking per-node lists and
 *		recomputing loads).
 */
static void
plan_rebuild(RingPlan *plan, PlanPoint *pts, int n)
{
	plan->npts = 0;
	for (int i = 0; i < plan->nnodes; i++)
	{
		plan->nodes[i].head = plan->nodes[i].largest = -1;
		plan->nodes[i].load = 0;
		plan->nodes[i].placed = false;
	}
	for (int i = 0; i < n; i++)
		plan_add_point(plan, pts[i].pos, pts[i].arc, pts[i].node);
}

/*
 * plan_remove_unwanted
 *		Hand the ranges of nodes not in the requested membership to remaining
 *		nodes (their points stay, with a new owner).  A range goes to the
 *		node owning the next remaining point, as in a classic ring, unless
 *		that would take it more than REMOVE_SLACK over its target; then it
 *		goes to the node furthest below its target.  Removing the node added
 *		last therefore gives every range back to the node it was taken from
 *		(those nodes end exactly at their old targets), and removing a
 *		long-standing node still leaves the ring balanced.
 */
#define REMOVE_SLACK 0.01

static void
plan_remove_unwanted(RingPlan *plan)
{
	PlanPoint  *pts = plan->pts;
	int			n = plan->npts;
	int		   *next_owner = palloc(sizeof(int) * Max(n, 1));
	int			owner = -1;
	double		total;

	qsort(pts, n, sizeof(PlanPoint), cmp_pos_signed);
	/* owner of the first remaining point after each point (cyclic: two passes) */
	for (int pass = 0; pass < 2; pass++)
		for (int i = n - 1; i >= 0; i--)
		{
			next_owner[i] = owner;
			if (plan->nodes[pts[i].node].wanted)
				owner = pts[i].node;
		}
	if (owner < 0 || n == 0)
	{
		plan_rebuild(plan, pts, 0);		/* nobody remains: empty ring */
		return;
	}

	/* loads and targets of the remaining nodes only */
	{
		PlanPoint  *copy = palloc(sizeof(PlanPoint) * n);
		int			nkeep = 0;

		for (int i = 0; i < n; i++)
			if (plan->nodes[pts[i].node].wanted)
				copy[nkeep++] = pts[i];
		for (int i = 0; i < n; i++)
			if (!plan->nodes[pts[i].node].wanted)
			{
				copy[nkeep] = pts[i];
				copy[nkeep++].node = -1 - next_owner[i];	/* pending, remember successor */
			}
		n = nkeep;
		pts = copy;
	}
	plan->npts = 0;
	for (int i = 0; i < plan->nnodes; i++)
	{
		plan->nodes[i].head = plan->nodes[i].largest = -1;
		plan->nodes[i].load = 0;
		plan->nodes[i].placed = false;
	}
	for (int i = 0; i < n && pts[i].node >= 0; i++)
		plan_add_point(plan, pts[i].pos, pts[i].arc, pts[i].node);
	total = plan_total_weight(plan);

	for (int i = 0; i < n; i++)
	{
		int			succ;
		int			best = -1;
		double		best_excess = 0;

		if (pts[i].node >= 0)
			continue;
		succ = -1 - pts[i].node;
		if (plan->nodes[succ].load + arc_size(pts[i].arc) <=
			(1.0 + REMOVE_SLACK) * RING_SPACE * plan->nodes[succ].weight / total)
			best = succ;
		else
			for (int k = 0; k < plan->nnodes; k++)
			{
				PlanNode   *nd = &plan->nodes[k];
				double		excess;

				if (!nd->placed)
					continue;
				excess = nd->load - RING_SPACE * nd->weight / total;
				if (best < 0 || excess < best_excess)
					best = k, best_excess = excess;
			}
		plan_add_point(plan, pts[i].pos, pts[i].arc, best);
	}
}

/*
 * plan_add_node
 *		Give a new node `weight` points (see the file header).
 */
static void
plan_add_node(RingPlan *plan, int node)
{
	PlanNode   *x = &plan->nodes[node];
	double		total;
	uint64		quantum;

	if (plan->npts == 0)
	{
		uint64		base = hash_bytes_extended((const unsigned char *) x->name, strlen(x->name), 0);
		uint64		step = PG_UINT64_MAX / (uint64) x->weight;

		/* arc of point 0 is what the other points leave (0 = everything) */
		plan_add_point(plan, base, (uint64) 0 - (uint64) (x->weight - 1) * step, node);
		for (int i = 1; i < x->weight; i++)
			plan_add_point(plan, base + (uint64) i * step, step, node);
		return;
	}

	total = plan_total_weight(plan) + x->weight;
	quantum = PG_UINT64_MAX / (uint64) total;
	for (int step = 0; step < x->weight; step++)
	{
		int			donor = -1;
		double		donor_excess = 0;
		PlanPoint  *p;
		uint64		take;
		uint64		pred;

		for (int k = 0; k < plan->nnodes; k++)
		{
			PlanNode   *n = &plan->nodes[k];
			double		excess;

			if (!n->placed || k == node)
				continue;
			excess = n->load - RING_SPACE * n->weight / total;
			if (donor < 0 || excess > donor_excess)
				donor = k, donor_excess = excess;
		}
		p = &plan->pts[plan->nodes[donor].largest];
		/* never take a whole range: the donor's point must keep >= 1 hash */
		take = Min(quantum, p->arc - 1);	/* arc 0 (full ring) wraps to 2^64-1 */
		if (take == 0)
			break;
		pred = p->pos - p->arc;
		p->arc -= take;
		plan->nodes[donor].load -= (double) take;
		plan_refresh_largest(plan, donor);
		plan_add_point(plan, pred + take, take, node);
	}
}

/*
 * courier_ring_plan
 *		_ring_plan(cur_pos bigint[], cur_node text[], nodes text[],
 *		vnodes int[]) -> (pos bigint, node text): the points of the ring that
 *		has exactly the given membership, derived from the current points by
 *		removing the nodes that are not listed and adding the listed nodes
 *		that have no points yet (in list order, with their vnode counts).
 */
Datum
courier_ring_plan(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *cur_pos, *cur_node, *nodes, *weights;
	bool	   *n1, *n2, *n3, *n4;
	int			ncur, ncur_node, nnodes, nweights;
	RingPlan		plan;
	HASHCTL		ctl;
	int		   *added;
	int			nadded = 0;

	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &cur_pos, &n1, &ncur);
	deconstruct_array_builtin(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, &cur_node, &n2, &ncur_node);
	deconstruct_array_builtin(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, &nodes, &n3, &nnodes);
	deconstruct_array_builtin(PG_GETARG_ARRAYTYPE_P(3), INT4OID, &weights, &n4, &nweights);
	if (ncur != ncur_node || nnodes != nweights)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("_ring_plan needs as many positions as nodes and as many vnode counts as nodes")));

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = NODE_NAME_MAX;
	ctl.entrysize = sizeof(NameEntry);
	ctl.hcxt = CurrentMemoryContext;
	plan.by_name = hash_create("pg_courier ring plan", Max(ncur / 16 + nnodes, 16), &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	plan.nodes = palloc(sizeof(PlanNode) * (ncur + nnodes + 1));
	plan.nnodes = 0;
	plan.cap = Max(ncur, 64);
	plan.pts = palloc_extended(sizeof(PlanPoint) * plan.cap, MCXT_ALLOC_HUGE);
	plan.npts = 0;
	added = palloc(sizeof(int) * (nnodes + 1));

	/* current points, sorted, with the arcs they own */
	{
		PlanPoint  *pts = palloc(sizeof(PlanPoint) * Max(ncur, 1));

		for (int i = 0; i < ncur; i++)
		{
			if (n1[i] || n2[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("ring points must not be NULL")));
			pts[i].pos = (uint64) DatumGetInt64(cur_pos[i]);
			pts[i].node = plan_node(&plan, TextDatumGetCString(cur_node[i]));
		}
		qsort(pts, ncur, sizeof(PlanPoint), cmp_pos_signed);
		for (int i = 0; i < ncur; i++)
		{
			if (i > 0 && pts[i].pos == pts[i - 1].pos)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("ring has two points at position " INT64_FORMAT, (int64) pts[i].pos)));
			pts[i].arc = pts[i].pos - pts[i == 0 ? ncur - 1 : i - 1].pos;
		}
		plan_rebuild(&plan, pts, ncur);
	}

	/* the requested membership */
	for (int i = 0; i < nnodes; i++)
	{
		int			k;

		if (n3[i] || n4[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("node names and vnode counts must not be NULL")));
		k = plan_node(&plan, TextDatumGetCString(nodes[i]));
		if (plan.nodes[k].wanted)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("node \"%s\" is listed twice", plan.nodes[k].name)));
		plan.nodes[k].wanted = true;
		plan.nodes[k].weight = DatumGetInt32(weights[i]);
		if (plan.nodes[k].weight < 1 || plan.nodes[k].weight > 10000)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("vnodes must be between 1 and 10000, not %d", plan.nodes[k].weight)));
		if (!plan.nodes[k].placed)
			added[nadded++] = k;
	}

	plan_remove_unwanted(&plan);
	for (int i = 0; i < nadded; i++)
		plan_add_node(&plan, added[i]);

	InitMaterializedSRF(fcinfo, 0);
	qsort(plan.pts, plan.npts, sizeof(PlanPoint), cmp_pos_signed);
	for (int i = 0; i < plan.npts; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = Int64GetDatum((int64) plan.pts[i].pos);
		values[1] = CStringGetTextDatum(plan.nodes[plan.pts[i].node].name);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
