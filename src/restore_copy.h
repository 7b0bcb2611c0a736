/*-------------------------------------------------------------------------
 *
 * restore_copy.h
 *	  COPY FROM STDIN into the extension's tables that name relations
 *	  (restore_copy.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RESTORE_COPY_H
#define RESTORE_COPY_H

#include "tcop/utility.h"

extern bool courier_restore_copy(ProcessUtility_hook_type next, PlannedStmt *pstmt,
								 const char *queryString, bool readOnlyTree,
								 ProcessUtilityContext context, ParamListInfo params,
								 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc);

#endif							/* RESTORE_COPY_H */
