/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pcinet test device: register map. The C mirror of devices/test/regs.ts (the contract);
 * docs/devices.md documents it for humans.
 */
#ifndef PCINET_TEST_REGS_H
#define PCINET_TEST_REGS_H

/* Experimental IDs, for synthetic devices only: not assigned by PCI-SIG. */
#define TEST_VENDOR_ID		0x7063
#define TEST_DEVICE_ID		0x0001

#define TEST_REG_BAR		0	/* 16 KiB: registers, MSI-X table and PBA */
#define TEST_MEM_BAR		2	/* plain memory: 64 KiB unless test:mem=SIZE */
#define TEST_MEM_BAR_SIZE	0x10000
#define TEST_MSIX_TABLE		0x2000
#define TEST_MSIX_PBA		0x3000
#define TEST_MAX_VECTORS	64

/* BAR 0 registers: 32-bit little-endian unless noted */
#define REG_MAGIC		0x00	/* ro TEST_MAGIC */
#define REG_VERSION		0x04	/* ro 1 */
#define REG_SCRATCH		0x08	/* rw plain storage */
#define REG_COMMAND		0x10	/* rw writing a CMD_* value starts that command */
#define REG_STATUS		0x14	/* rw1c STATUS_* */
#define REG_ARG			0x18	/* rw vector for RAISE_MSIX, seed for DMA_WRITE */
#define REG_IRQ_VECTOR		0x1c	/* rw vector raised on completion; IRQ_NONE for none */
#define REG_SRC_ADDR		0x20	/* rw 64-bit: IOVA read by DMA_READ */
#define REG_DST_ADDR		0x28	/* rw 64-bit: IOVA written by DMA_WRITE */
#define REG_SIZE		0x30	/* rw bytes for the DMA commands, 1..TEST_MAX_DMA */
#define REG_CHECKSUM		0x34	/* ro CRC-32 (zlib) of what DMA_READ read */
#define REG_ERROR		0x38	/* ro ErrorCode of the last command */
#define REG_VECTORS		0x3c	/* ro number of MSI-X vectors */
#define REG_COUNTER		0x40	/* ro, volatile: increments on every read */
#define REG_IRQ_DOORBELL	0x44	/* wo: writing N raises vector N */
#define REG_DONE_COUNT		0x48	/* ro commands completed since reset */

#define TEST_MAGIC		0x544e4350	/* "PCNT" */
#define IRQ_NONE_VECTOR		0xffffffff
#define TEST_MAX_DMA		(4 << 20)

#define CMD_RAISE_MSIX		1
#define CMD_DMA_READ		2
#define CMD_DMA_WRITE		3
#define CMD_RAISE_BURST		4	/* raise vector ARG SIZE times at once */
#define CMD_DMA_READ_COPY	5	/* DMA_READ without the CRC */
#define CMD_DMA_WRITE_COPY	6	/* DMA_WRITE from a pattern made once per seed */
#define TEST_MAX_BURST		8192

#define STATUS_DONE		BIT(0)
#define STATUS_ERROR		BIT(1)
#define STATUS_BUSY		BIT(2)

/* ErrorCode values of proto/pcinet.proto that the device reports in REG_ERROR */
#define TEST_ERR_BAD_ARGUMENT	12
#define TEST_ERR_DMA_FAULT	13

#endif /* PCINET_TEST_REGS_H */
