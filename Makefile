# pg_courier — PGXS build.
#
#   make && make install                 build and install against $(PG_CONFIG)
#   make installcheck                    pg_regress + TAP against a running server
#                                        (PGHOST/PGPORT; the server must preload pg_courier)
#   make demo | make test | make bench   the README's one-command entry points
#                                        (they install what they need; see tools/)

EXTENSION   = pg_courier
MODULE_big  = pg_courier
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA        = $(sort $(wildcard sql/pg_courier--*.sql))
DOCS        = $(wildcard doc/*.md)
PGFILEDESC  = "pg_courier - transactional outbox and friends"

# Regression inputs are every sql/*.sql that is not an install/upgrade script.
REGRESS      = $(patsubst sql/%.sql,%,$(filter-out sql/pg_courier--%,$(sort $(wildcard sql/*.sql))))
REGRESS_OPTS = --inputdir=. --outputdir=$(or $(REGRESS_OUTDIR),.)

# TAP suite: test/t/*.pl with our helper modules in test/perl.
TAP_TESTS   = 1
PROVE_TESTS = $(or $(TAP),test/t/*.pl)

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK  = -lcurl
# Warnings are errors in our own builds (tools/*.sh set COURIER_WERROR=1).
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare \
              $(if $(COURIER_WERROR),-Werror)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
# (after PGXS, which resets it)
PROVE_FLAGS += -I $(CURDIR)/test/perl
else
all install installcheck:
	@echo "pg_config not found ($(PG_CONFIG)); run tools/setup.sh or set PG_CONFIG" >&2; exit 1
endif

# PGXS tracks header dependencies only in --enable-depend builds: every object depends on our headers.
$(OBJS): $(wildcard src/*.h)

.PHONY: demo test bench
demo:
	tools/demo.sh
test:
	tools/test.sh
bench:
	tools/bench.sh
