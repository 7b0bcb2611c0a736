/*-------------------------------------------------------------------------
 *
 * cache_store.c
 *	  Partitions of the shared-memory cache: layout, hash lookup, the chunk
 *	  allocator, LRU order and eviction.
 *
 * Unless a comment says otherwise, every function here expects the caller
 * to hold the partition's LWLock exclusively, and never raises an error
 * (they run from commit callbacks too).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "cache.h"

Oid			cache_space = InvalidOid;

/*
 * cache_hash
 *		Hash of a key in this backend's database and the current key space
 *		(keys are per database and per key space).
 */
uint32
cache_hash(const char *key, int keylen)
{
	return hash_combine(hash_combine(hash_bytes((const unsigned char *) key, keylen),
									 MyDatabaseId), cache_space);
}

/*
 * cache_partition
 *		The partition a hash belongs to (no lock needed).
 */
CachePartition *
cache_partition(uint32 hash)
{
	return cache_shared->partitions[hash % (uint32) cache_shared->npartitions];
}

/*
 * cache_lock
 *		Take a partition's lock exclusively, counting acquisitions that had to
 *		wait (the per-partition contention figure of cache_partition_stats).
 */
void
cache_lock(CachePartition *p)
{
	if (!LWLockConditionalAcquire(p->lock, LW_EXCLUSIVE))
	{
		LWLockAcquire(p->lock, LW_EXCLUSIVE);
		p->c.contended++;
	}
}

static inline uint32
bucket_of(CachePartition *p, uint32 hash)
{
	/* the low bits chose the partition; use the others for the bucket */
	return (hash / (uint32) cache_shared->npartitions) & p->bucket_mask;
}

/*
 * chunks_equal
 *		Compare len bytes stored from chunk `first` on with `buf`.
 */
static bool
chunks_equal(CachePartition *p, int32 chunk, const char *buf, int len)
{
	while (len > 0)
	{
		int			n = Min(len, (int) CACHE_CHUNK_DATA);

		if (memcmp(p->chunks[chunk].data, buf, n) != 0)
			return false;
		buf += n;
		len -= n;
		chunk = p->chunks[chunk].next;
	}
	return true;
}

/*
 * cache_lookup
 *		Index of the entry (any state) for key in this database, or -1.
 */
int32
cache_lookup(CachePartition *p, uint32 hash, const char *key, int keylen)
{
	int32		idx = p->buckets[bucket_of(p, hash)];

	while (idx >= 0)
	{
		CacheEntry *e = &p->entries[idx];

		if (e->hash == hash && e->keylen == keylen && e->dboid == MyDatabaseId &&
			e->owner == cache_space && chunks_equal(p, e->chunk, key, keylen))
			return idx;
		idx = e->hnext;
	}
	return -1;
}

static void
lru_unlink(CachePartition *p, int32 idx)
{
	CacheEntry *e = &p->entries[idx];

	if (e->prev >= 0)
		p->entries[e->prev].next = e->next;
	else
		p->lru_head = e->next;
	if (e->next >= 0)
		p->entries[e->next].prev = e->prev;
	else
		p->lru_tail = e->prev;
	e->prev = e->next = -1;
}

static void
lru_push_front(CachePartition *p, int32 idx)
{
	CacheEntry *e = &p->entries[idx];

	e->prev = -1;
	e->next = p->lru_head;
	if (p->lru_head >= 0)
		p->entries[p->lru_head].prev = idx;
	else
		p->lru_tail = idx;
	p->lru_head = idx;
}

/*
 * cache_move_front
 *		Mark an entry most recently used.
 */
void
cache_move_front(CachePartition *p, int32 idx)
{
	if (p->lru_head == idx)
		return;
	lru_unlink(p, idx);
	lru_push_front(p, idx);
}

/*
 * cache_remove
 *		Unlink an entry from its bucket and the LRU list and give its chunks
 *		and header back to the free lists.
 */
void
cache_remove(CachePartition *p, int32 idx)
{
	CacheEntry *e = &p->entries[idx];
	int32	   *link = &p->buckets[bucket_of(p, e->hash)];
	int32		c = e->chunk;

	while (*link != idx)
		link = &p->entries[*link].hnext;
	*link = e->hnext;
	lru_unlink(p, idx);

	for (int i = 0; i < e->nchunks; i++)
	{
		int32		next = p->chunks[c].next;

		p->chunks[c].next = p->free_chunk;
		p->free_chunk = c;
		c = next;
	}
	p->used_chunks -= e->nchunks;
	p->used_entries--;

	e->state = CACHE_FREE;
	e->chunk = -1;
	e->nchunks = 0;
	e->next = p->free_entry;
	p->free_entry = idx;
}

/*
 * evict_one
 *		Remove the least recently used entry that is not being loaded (a
 *		loading entry has waiters).  Expired victims count as expirations.
 *		Returns false when nothing can be evicted.
 */
static bool
evict_one(CachePartition *p)
{
	int32		idx = p->lru_tail;
	TimestampTz now = 0;

	while (idx >= 0 && p->entries[idx].state == CACHE_LOADING)
		idx = p->entries[idx].prev;
	if (idx < 0)
		return false;
	if (p->entries[idx].expires != 0)
		now = cache_now();
	if (p->entries[idx].expires != 0 && p->entries[idx].expires <= now)
		p->c.expirations++;
	else if (p->entries[idx].state == CACHE_VALID)
		p->c.evictions++;
	cache_remove(p, idx);
	return true;
}

/*
 * cache_insert
 *		Add a new entry (the key must not be present) holding key || val, at
 *		the front of the LRU list, evicting from the tail until an entry
 *		header and enough chunks are free.  Returns its index, or -1 when the
 *		partition cannot make room (only loading entries left).
 */
int32
cache_insert(CachePartition *p, uint32 hash, const char *key, int keylen,
			 const char *val, int vallen, uint8 type, uint8 state)
{
	int			total = keylen + vallen;
	int32		need = (total + CACHE_CHUNK_DATA - 1) / CACHE_CHUNK_DATA;
	int32		idx;
	int32	   *link;
	int			off = 0;
	CacheEntry *e;

	if (need > p->nchunks)
		return -1;
	while (p->free_entry < 0 || p->nchunks - p->used_chunks < need)
	{
		if (!evict_one(p))
			return -1;
	}

	idx = p->free_entry;
	e = &p->entries[idx];
	p->free_entry = e->next;

	/* take `need` chunks, filling them with key then value */
	link = &e->chunk;
	*link = -1;
	for (int i = 0; i < need; i++)
	{
		int32		c = p->free_chunk;
		int			n = Min(total - off, (int) CACHE_CHUNK_DATA);
		char	   *dst = p->chunks[c].data;

		p->free_chunk = p->chunks[c].next;
		p->chunks[c].next = -1;
		*link = c;
		link = &p->chunks[c].next;
		/* the n bytes at [off, off + n) straddle key and value */
		for (int done = 0; done < n;)
		{
			int			pos = off + done;
			int			m;

			if (pos < keylen)
			{
				m = Min(n - done, keylen - pos);
				memcpy(dst + done, key + pos, m);
			}
			else
			{
				m = n - done;
				memcpy(dst + done, val + (pos - keylen), m);
			}
			done += m;
		}
		off += n;
	}
	p->used_chunks += need;
	p->used_entries++;

	e->hash = hash;
	e->nchunks = need;
	e->dboid = MyDatabaseId;
	e->owner = cache_space;
	e->keylen = keylen;
	e->vallen = vallen;
	e->state = state;
	e->type = type;
	e->invalidated = false;
	e->errcode = 0;
	e->loader_pid = 0;
	e->load_id = 0;
	e->expires = 0;

	e->hnext = p->buckets[bucket_of(p, hash)];
	p->buckets[bucket_of(p, hash)] = idx;
	lru_push_front(p, idx);
	return idx;
}

/*
 * cache_copy_value
 *		A palloc'd varlena holding the entry's value bytes.  May raise an
 *		out-of-memory error; the partition is consistent at that point.
 */
struct varlena *
cache_copy_value(CachePartition *p, CacheEntry *e)
{
	struct varlena *result = (struct varlena *) palloc(VARHDRSZ + e->vallen);
	char	   *dst = VARDATA(result);
	int32		c = e->chunk;
	int			skip = e->keylen;
	int			left = e->vallen;

	SET_VARSIZE(result, VARHDRSZ + e->vallen);
	/* skip the key */
	while (skip >= (int) CACHE_CHUNK_DATA)
	{
		c = p->chunks[c].next;
		skip -= CACHE_CHUNK_DATA;
	}
	while (left > 0)
	{
		int			n = Min(left, (int) CACHE_CHUNK_DATA - skip);

		memcpy(dst, p->chunks[c].data + skip, n);
		dst += n;
		left -= n;
		skip = 0;
		c = p->chunks[c].next;
	}
	return result;
}

/*
 * cache_key_has_prefix
 *		Does the entry's key start with prefix?
 */
bool
cache_key_has_prefix(CachePartition *p, CacheEntry *e, const char *prefix, int len)
{
	return e->keylen >= len && chunks_equal(p, e->chunk, prefix, len);
}

/*
 * forget_entry
 *		Delete an entry on behalf of cache_delete and invalidation.  A loading
 *		entry stays (its waiters wait for the loader) but is marked so that the
 *		loader, which may have read the old value, does not store it.
 */
static void
forget_entry(CachePartition *p, int32 idx)
{
	CacheEntry *e = &p->entries[idx];

	if (e->state == CACHE_LOADING)
		e->invalidated = true;
	else
		cache_remove(p, idx);
}

/*
 * cache_delete_key
 *		Delete one key of this database (takes the lock).  Returns whether a
 *		value was there.  Never raises an error: commit callbacks use it.
 */
bool
cache_delete_key(const char *key, int keylen)
{
	uint32		hash = cache_hash(key, keylen);
	CachePartition *p = cache_partition(hash);
	int32		idx;
	bool		found = false;

	cache_lock(p);
	p->last_delete = GetCurrentTimestamp();
	idx = cache_lookup(p, hash, key, keylen);
	if (idx >= 0)
	{
		found = (p->entries[idx].state == CACHE_VALID);
		if (found)
			p->c.deletes++;
		forget_entry(p, idx);
	}
	LWLockRelease(p->lock);
	return found;
}

/*
 * cache_delete_matching
 *		Delete every key starting with prefix (every key when len = 0) of
 *		this database and key space, of every key space of this database, or
 *		of the whole cluster (reach).  Partitions are locked one at a
 *		time, so the deletion is not atomic across partitions.  Returns the
 *		number of values deleted.  Never raises an error.
 */
int64
cache_delete_matching(const char *prefix, int len, CacheReach reach)
{
	int64		count = 0;

	for (int i = 0; i < cache_shared->npartitions; i++)
	{
		CachePartition *p = cache_shared->partitions[i];
		int32		idx;

		cache_lock(p);
		p->last_delete = GetCurrentTimestamp();
		idx = p->lru_head;
		while (idx >= 0)
		{
			CacheEntry *e = &p->entries[idx];
			int32		next = e->next;

			if ((reach == CACHE_REACH_CLUSTER ||
				 (e->dboid == MyDatabaseId &&
				  (reach == CACHE_REACH_DATABASE || e->owner == cache_space))) &&
				cache_key_has_prefix(p, e, prefix, len))
			{
				if (e->state == CACHE_VALID)
				{
					count++;
					p->c.deletes++;
				}
				forget_entry(p, idx);
			}
			idx = next;
		}
		LWLockRelease(p->lock);
	}
	return count;
}

/*
 * cache_partition_layout
 *		How many entry headers, chunks and buckets a partition of `bytes`
 *		bytes holds.  With max_entries = 0 the number of headers is sized for
 *		one-chunk values, so the cache is bounded by bytes; otherwise each
 *		partition has its exact share of max_entries.  nchunks comes out
 *		below 1 when the memory is too small.
 */
void
cache_partition_layout(int npartitions, Size bytes, int max_entries,
					   int32 *nentries, int32 *nchunks, int32 *nbuckets)
{
	Size		hdr = MAXALIGN(sizeof(CachePartition));
	Size		avail = bytes > hdr + 3 * MAXIMUM_ALIGNOF ? bytes - hdr - 3 * MAXIMUM_ALIGNOF : 0;
	int64		e;
	int64		b = 1;
	int64		c;

	if (max_entries > 0)
		e = (max_entries + npartitions - 1) / npartitions;
	else
		e = Max(1, avail / (sizeof(CacheEntry) + 2 * sizeof(int32) + CACHE_CHUNK_SIZE));
	while (b < e)
		b <<= 1;
	c = ((int64) avail - e * (int64) sizeof(CacheEntry) - b * (int64) sizeof(int32)) / CACHE_CHUNK_SIZE;
	*nentries = (int32) e;
	*nbuckets = (int32) b;
	*nchunks = (int32) Max(c, 0);
}

/*
 * cache_partition_size
 *		Bytes of one partition with that layout.
 */
Size
cache_partition_size(int32 nentries, int32 nchunks, int32 nbuckets)
{
	Size		size = MAXALIGN(sizeof(CachePartition));

	size = add_size(size, MAXALIGN(mul_size(nentries, sizeof(CacheEntry))));
	size = add_size(size, MAXALIGN(mul_size(nbuckets, sizeof(int32))));
	size = add_size(size, MAXALIGN(mul_size(nchunks, CACHE_CHUNK_SIZE)));
	return size;
}

/*
 * cache_partition_init
 *		Lay out a fresh partition in the memory that follows its header (the
 *		caller sets p->lock).
 */
void
cache_partition_init(CachePartition *p, int32 nentries, int32 nchunks, int32 nbuckets)
{
	char	   *mem = (char *) p + MAXALIGN(sizeof(CachePartition));

	memset(p, 0, sizeof(CachePartition));
	ConditionVariableInit(&p->cv);
	p->entries = (CacheEntry *) mem;
	mem += MAXALIGN(mul_size(nentries, sizeof(CacheEntry)));
	p->buckets = (int32 *) mem;
	mem += MAXALIGN(mul_size(nbuckets, sizeof(int32)));
	p->chunks = (CacheChunk *) mem;

	p->nentries = nentries;
	p->nchunks = nchunks;
	p->bucket_mask = nbuckets - 1;
	p->lru_head = p->lru_tail = -1;

	for (int32 i = 0; i < nbuckets; i++)
		p->buckets[i] = -1;
	for (int32 i = 0; i < nentries; i++)
	{
		p->entries[i].state = CACHE_FREE;
		p->entries[i].chunk = -1;
		p->entries[i].prev = -1;
		p->entries[i].next = i + 1 < nentries ? i + 1 : -1;
	}
	p->free_entry = nentries > 0 ? 0 : -1;
	for (int32 i = 0; i < nchunks; i++)
		p->chunks[i].next = i + 1 < nchunks ? i + 1 : -1;
	p->free_chunk = nchunks > 0 ? 0 : -1;
}
