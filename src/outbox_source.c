/*-------------------------------------------------------------------------
 *
 * outbox_source.c
 *	  The default CloudEvents "source" of an outbox:
 *	  /pg_courier/<database>/<schema>.<table>, as a URI-reference.
 *
 * CloudEvents receivers (the official SDKs) reject an event whose source is
 * not a URI-reference, so the names are percent-encoded (UTF-8 bytes) except
 * for the characters a path segment may hold as they are: a table named
 * "my events" gives /pg_courier/db/public.my%20events.  A source given as an
 * option is the owner's, validated when stored, and sent unchanged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "outbox_worker.h"

/*
 * append_segment
 *		Append name percent-encoded as a URI path segment (RFC 3986 pchar
 *		without '%', which is always encoded).
 */
static void
append_segment(StringInfo buf, const char *name)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *) name; *p; p++)
	{
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
			strchr("-._~!$&'()*+,;=:@", *p) != NULL)
			appendStringInfoChar(buf, (char) *p);
		else
		{
			appendStringInfoChar(buf, '%');
			appendStringInfoChar(buf, hex[*p >> 4]);
			appendStringInfoChar(buf, hex[*p & 0x0F]);
		}
	}
}

/*
 * courier_default_source
 *		The default source of the outbox relid, in cxt ("/pg_courier" alone
 *		if the names cannot be looked up: the table was just dropped).
 */
char *
courier_default_source(Oid relid, MemoryContext cxt)
{
	StringInfoData buf;
	char	   *db = get_database_name(MyDatabaseId);
	char	   *rel = get_rel_name(relid);
	char	   *nsp = get_namespace_name(get_rel_namespace(relid));
	char	   *result;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "/pg_courier");
	if (db && rel && nsp)
	{
		appendStringInfoChar(&buf, '/');
		append_segment(&buf, db);
		appendStringInfoChar(&buf, '/');
		append_segment(&buf, nsp);
		appendStringInfoChar(&buf, '.');
		append_segment(&buf, rel);
	}
	result = MemoryContextStrdup(cxt, buf.data);
	pfree(buf.data);
	return result;
}
