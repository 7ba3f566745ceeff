// SPDX-License-Identifier: GPL-2.0
#include <errno.h>

#include "cases.h"
#include "cases-table.h"
