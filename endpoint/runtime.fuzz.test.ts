// Fuzzing the endpoint's message handling: whatever a host sends after attach, the runtime either
// applies it or throws a ProtocolError (the session then closes with its code) — never anything
// else, and it stays usable for well-formed traffic.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { REG } from '../devices/test/regs.js';
import { decodeFrame, encodeMsg, encodeSequenced } from '../proto/codec.js';
import { ErrorCode, long, type Msg, ProtocolError } from '../proto/wire.js';
import { FakeSession } from './fake-session.js';
import { EndpointRuntime } from './runtime.js';

function attached() {
  const session = new FakeSession();
  const runtime = new EndpointRuntime(session, [new TestDevice()]);
  void runtime.start();
  session.deliver({ attachResult: { dev: 1, code: ErrorCode.OK, address: 'fuzz:00.0' } });
  return { session, runtime };
}

const small = fc.integer({ min: 0, max: 8 });
const offset = fc.oneof(
  fc.integer({ min: 0, max: 0x5000 }),
  fc.constantFrom(0, 0x40, 0x44, 0x2000, 0xffff_ffff),
);
const data = fc.uint8Array({ minLength: 0, maxLength: 12 });

const hostMsg: fc.Arbitrary<Msg> = fc.oneof(
  fc.record({ mmioWrite: fc.record({ dev: small, bar: small, offset: offset.map(long), data }) }),
  fc.record({
    mmioRead: fc.record({
      dev: small,
      tag: fc.nat(100),
      bar: small,
      offset: offset.map(long),
      size: fc.nat(16),
    }),
  }),
  fc.record({ dmaReadCpl: fc.record({ dev: small, tag: fc.nat(100), status: fc.nat(20), data }) }),
  fc.record({
    configWrite: fc.record({ dev: small, offset: fc.nat(0x1100), size: fc.nat(9), value: fc.nat() }),
  }),
  fc.record({ functionReset: fc.record({ dev: small }) }),
  fc.record({ detach: fc.record({ dev: small, reason: fc.nat(20) }) }),
  fc.record({ attachResult: fc.record({ dev: small, code: fc.nat(20) }) }),
  fc.record({ statsRequest: fc.record({ nonce: fc.nat().map(long) }) }),
  fc.record({ interrupt: fc.record({ dev: small, vector: fc.nat(40) }) }),
);

describe('endpoint runtime under random host traffic', () => {
  // 20 000 synchronous runs: ~15 s alone, 4× that on a machine with a lab VM and builds beside it;
  // the bound is only for a report, since a synchronous loop cannot be interrupted anyway.
  it('applies or refuses with a coded error (20 000 batches, decoded from the wire)', {
    timeout: 600_000,
  }, () => {
    fc.assert(
      fc.property(fc.array(hostMsg, { minLength: 1, maxLength: 6 }), (msgs) => {
        const { runtime } = attached();
        // Through the real codec, as a session would hand them over.
        const decoded = decodeFrame(
          encodeSequenced(
            1,
            0,
            msgs.map((m) => encodeMsg(m)),
          ),
        ).msgs;
        try {
          runtime.receive(decoded);
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
        }
      }),
      { numRuns: 20_000 },
    );
  });

  it('stays usable after refusing a bad message', () => {
    const { runtime, session } = attached();
    expect(() =>
      runtime.receive([{ mmioWrite: { dev: 1, bar: 5, offset: long(0), data: Uint8Array.of(1) } }]),
    ).toThrow(ProtocolError);
    session.reset();
    runtime.receive([
      { mmioWrite: { dev: 1, bar: 0, offset: long(REG.SCRATCH), data: Uint8Array.of(7, 0, 0, 0) } },
    ]);
    expect(session.sent.some((m) => m.writesApplied)).toBe(true);
  });
});
