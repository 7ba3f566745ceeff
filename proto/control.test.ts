import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ControlClient, ControlError, type ControlServer, listenControl } from './control.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-control-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const open: { close(): unknown }[] = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});
let n = 0;
const path = () => join(dir, `s${++n}`, 'x.sock');

async function serve(p: string, handlers = {}): Promise<ControlServer> {
  const s = await listenControl(p, 'test', handlers);
  open.push(s);
  return s;
}
async function client(p: string): Promise<ControlClient> {
  const c = await ControlClient.connect(p);
  open.push(c);
  return c;
}

describe('the control socket', () => {
  it('answers commands from its table on a 0600 socket; names the commands it has', async () => {
    const p = path();
    await serve(p, { add: (a: Record<string, unknown>) => ({ sum: (a.a as number) + (a.b as number) }) });
    expect(statSync(p).mode & 0o777).toBe(0o600);
    const c = await client(p);
    expect(await c.request('add', { a: 2, b: 3 })).toEqual({ sum: 5 });
    expect(await c.request('hello')).toMatchObject({ version: 1, role: 'test', commands: ['hello', 'add'] });
    const e = await c.request('inject').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ControlError);
    expect((e as ControlError).code).toBe('UNKNOWN_COMMAND');
    expect((e as ControlError).message).toMatch(/unknown command "inject" \(this one knows hello, add\)/);
  });

  it('answers a request that is not JSON, or not a request, with BAD_REQUEST', async () => {
    const p = path();
    await serve(p);
    const s = net.connect(p);
    open.push({ close: () => s.destroy() });
    const lines: string[] = [];
    s.on('data', (d) => lines.push(...d.toString().trim().split('\n')));
    s.write('nonsense\n{"cmd":"hello"}\n');
    while (lines.length < 2) await new Promise((r) => setTimeout(r, 10));
    expect(lines.map((l) => JSON.parse(l).error.code)).toEqual(['BAD_REQUEST', 'BAD_REQUEST']);
  });

  it('streams events until the client cancels, then sends the final reply', async () => {
    const p = path();
    await serve(p, {
      count: async (_a: unknown, ctx: { signal: AbortSignal; emit(e: unknown): boolean }) => {
        let i = 0;
        while (!ctx.signal.aborted) {
          ctx.emit({ i: i++ });
          await new Promise((r) => setTimeout(r, 5));
        }
        return { sent: i };
      },
    });
    const c = await client(p);
    const events: number[] = [];
    const req = c.request('count', {}, (e) => {
      events.push((e as { i: number }).i);
      if (events.length === 5) c.cancel(req.id);
    });
    const r = (await req) as { sent: number };
    expect(events.slice(0, 5)).toEqual([0, 1, 2, 3, 4]);
    expect(r.sent).toBeGreaterThanOrEqual(5);
  });

  it('aborts a client’s streams when it goes away', async () => {
    const p = path();
    let aborted!: () => void;
    const gone = new Promise<void>((r) => {
      aborted = r;
    });
    await serve(p, {
      wait: (_a: unknown, ctx: { signal: AbortSignal }) =>
        new Promise<void>((r) =>
          ctx.signal.addEventListener('abort', () => {
            aborted();
            r();
          }),
        ),
    });
    const c = await ControlClient.connect(p);
    c.request('wait').catch(() => {});
    await new Promise((r) => setTimeout(r, 50));
    c.close();
    await gone;
  });

  it('removes a stale socket, and refuses a live one or a path that is no socket', async () => {
    const p = path();
    // A socket whose process is gone: a child listens and is killed.
    const child = spawn(process.execPath, [
      '-e',
      `require("net").createServer().listen(${JSON.stringify(p)}, () => console.log("up"))`,
    ]);
    await serve(join(p, '..', 'mkdir.sock')); // creates the directory
    await new Promise((r) => child.stdout.once('data', r));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await serve(p);
    expect(await (await client(p)).request('hello')).toMatchObject({ role: 'test' });
    await expect(listenControl(p, 'endpoint', {})).rejects.toThrow(
      `control socket ${p} is in use by a running process (another pcinet endpoint?)`,
    );
    const file = join(dir, 'plain-file');
    writeFileSync(file, 'x');
    await expect(listenControl(file, 'host', {})).rejects.toThrow(/exists and is not a socket/);
  });

  it('says what is wrong when there is nothing to connect to', async () => {
    await expect(ControlClient.connect(join(dir, 'none.sock'))).rejects.toThrow(/no such socket/);
  });

  it('takes the socket away when it closes', async () => {
    const p = path();
    const s = await listenControl(p, 'test', {});
    await s.close();
    expect(() => statSync(p)).toThrow();
  });
});
