// Checks an endpoint's PushRule (docs/PUSH.md) before a channel applies it: the same limits
// pcinet.ko enforces on W_PUSH_RULE, so a bad rule closes the session with a code instead of
// reaching the kernel (which would refuse the record and lose the device).
import { MAX_PUSH_RULES, PUSH_MAX_BYTES } from '../devices/push.js';
import { type DeviceDescription, ErrorCode, ProtocolError, pcinet, u64 } from '../proto/wire.js';

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Returns `r` when the device may set it, else throws ProtocolError(BAD_ARGUMENT). */
export function checkPushRule(r: pcinet.IPushRule, desc: DeviceDescription): pcinet.IPushRule {
  const id = r.id ?? 0;
  const bad = (why: string): never => {
    throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `device ${r.dev ?? 0}: push rule ${id}: ${why}`);
  };
  if (id >= MAX_PUSH_RULES) bad(`id past ${MAX_PUSH_RULES - 1}`);
  const kind = r.kind ?? pcinet.PushKind.PUSH_NONE;
  if (kind === pcinet.PushKind.PUSH_NONE) return r;
  const bar = (desc.bars ?? []).find((b) => (b.index ?? 0) === (r.bar ?? 0));
  if (!bar) bad(`no BAR ${r.bar ?? 0}`);
  if (u64(r.offset) + 4n > u64(bar!.size)) bad(`doorbell 0x${u64(r.offset).toString(16)} outside the BAR`);
  const entries = r.entries ?? 0;
  if ((r.dataMax ?? 0) > PUSH_MAX_BYTES) bad(`data_max ${r.dataMax} over ${PUSH_MAX_BYTES}`);
  switch (kind) {
    case pcinet.PushKind.PUSH_NVME_SQ: {
      if (entries < 2 || entries > 65536) bad(`${entries} entries`);
      const shift = r.lbaShift ?? 0;
      if (shift < 9 || shift > 12) bad(`lba_shift ${shift}`);
      if (r.indirect) bad('indirect set on an NVMe rule');
      // avail: the SQ's event index (CAP_SQ_EVENT_IDX), a 4-byte slot.
      if (u64(r.avail) % 4n) bad(`event index 0x${u64(r.avail).toString(16)} not 4-byte aligned`);
      // shadow: the SQ tail's shadow doorbell, a 4-byte slot, only beside an event index.
      if (u64(r.shadow) % 4n) bad(`shadow tail 0x${u64(r.shadow).toString(16)} not 4-byte aligned`);
      if (u64(r.shadow) && !u64(r.avail)) bad('shadow tail without an event index');
      return r;
    }
    case pcinet.PushKind.PUSH_VIRTQ:
      if (!isPow2(entries) || entries > 32768) bad(`${entries} entries`);
      if ((r.lbaShift ?? 0) !== 0) bad('lba_shift set on a virtqueue rule');
      if (u64(r.shadow)) bad('shadow tail set on a virtqueue rule');
      return r;
    default:
      return bad(`unknown kind ${kind}`);
  }
}
