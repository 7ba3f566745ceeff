/* SPDX-License-Identifier: GPL-2.0 */
/* What kernel/push-walk.c needs from the kernel, for the userspace harness: u8..u64 and bool. */
#ifndef PUSH_SHIM_H
#define PUSH_SHIM_H

#include <stdbool.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#endif /* PUSH_SHIM_H */
