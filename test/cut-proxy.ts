// An in-process TCP proxy on loopback that can cut every connection through it (both sides see a
// reset), black-hole them (bytes stop flowing and are dropped, sockets stay open), hold them (a
// silent link: nothing moves, nothing is lost, as when a cable is pulled and put back) or refuse
// new ones (reset at once) — for resume, keep-alive and outage tests. `test/cut-proxy-main.ts`
// runs one as a process (in the lab's network namespace, between the guest and the endpoint).
// It can also cut at a moment instead of at a time: at the first record the next kernel link
// carries from the host past its hello (pcinet.ko's first access to a device whose link just came
// up), before that record reaches the endpoint.
import net from 'node:net';
import { LINK_HELLO_SIZE, LINK_MAGIC } from '../proto/kernel-abi.js';

export class CutProxy {
  readonly #server: net.Server;
  readonly #pairs = new Set<[net.Socket, net.Socket]>();
  readonly #listen: { port: number; host: string };
  #blackhole = false;
  #held = false;
  #refusing = false;
  /** Armed by cutNextLink(): called once, when it cut. */
  #linkTrap: (() => void) | undefined;
  /** Connections accepted so far; the trap is for those accepted after it was armed. */
  #accepted = 0;
  #trapFrom = 0;
  cuts = 0;
  connections = 0;
  refused = 0;
  port = 0;

  private constructor(targetPort: number, targetHost: string, listen: { port: number; host: string }) {
    this.#listen = listen;
    this.#server = net.createServer((client) => {
      if (this.#refusing) {
        this.refused++;
        client.on('error', () => {});
        client.resetAndDestroy();
        return;
      }
      this.connections++;
      const seq = ++this.#accepted;
      const upstream = net.connect(targetPort, targetHost);
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.#pairs.add(pair);
      if (this.#held) for (const s of pair) s.pause();
      const end = () => {
        this.#pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      // The host's side of the connection so far (up to a kernel link's hello), to tell a
      // kernel link's records from its hello.
      let head = Buffer.alloc(0);
      let fromHost = 0;
      client.on('data', (d: Buffer) => {
        if (head.length < LINK_HELLO_SIZE) head = Buffer.concat([head, d.subarray(0, LINK_HELLO_SIZE)]);
        fromHost += d.length;
        const link = head.subarray(0, LINK_MAGIC.length).equals(LINK_MAGIC);
        if (link && fromHost > LINK_HELLO_SIZE && this.#linkTrap && seq > this.#trapFrom) {
          // The hello (if it came in the same chunk) passes; the record behind it does not.
          const hello = LINK_HELLO_SIZE - (fromHost - d.length);
          if (hello > 0 && !this.#blackhole) upstream.write(d.subarray(0, hello));
          const fired = this.#linkTrap;
          this.#linkTrap = undefined;
          this.refuse(true);
          this.cutAll();
          fired();
          return;
        }
        if (!this.#blackhole) upstream.write(d);
      });
      upstream.on('data', (d) => {
        if (!this.#blackhole) client.write(d);
      });
      for (const s of pair) {
        s.on('error', end);
        s.on('close', end);
      }
    });
  }

  /** A proxy to targetHost:targetPort, listening on 127.0.0.1 (port `listenPort`, default any). */
  static async start(targetPort: number, targetHost = '127.0.0.1', listenPort = 0): Promise<CutProxy> {
    const p = new CutProxy(targetPort, targetHost, { port: listenPort, host: '127.0.0.1' });
    await new Promise<void>((res, rej) => {
      p.#server.once('error', rej);
      p.#server.listen(p.#listen.port, p.#listen.host, res);
    });
    p.port = (p.#server.address() as net.AddressInfo).port;
    return p;
  }

  /** Resets every connection through the proxy now. */
  cutAll(): number {
    const n = this.#pairs.size;
    for (const [a, b] of this.#pairs) {
      a.resetAndDestroy();
      b.resetAndDestroy();
    }
    this.#pairs.clear();
    this.cuts += n;
    return n;
  }

  /** Stops (true) or restarts forwarding bytes without closing anything. */
  blackhole(on: boolean): void {
    this.#blackhole = on;
  }

  /** Stops (true) or restarts every connection, old and new, without losing a byte: the proxy
   *  reads nothing, so what the peers send waits in their socket buffers (TCP's flow control). */
  hold(on: boolean): void {
    this.#held = on;
    for (const pair of this.#pairs) for (const s of pair) on ? s.pause() : s.resume();
  }

  /** Arms a cut at a moment: the first bytes the next kernel link (a connection accepted from now
   *  on that starts with pcinet.ko's hello) sends past its hello are not forwarded; instead every
   *  connection is reset and new ones are refused, as by cutAll() and refuse(true), and `fired` is
   *  called. */
  cutNextLink(fired: () => void): void {
    this.#linkTrap = fired;
    this.#trapFrom = this.#accepted;
  }

  /** New connections are reset at once (true), as by a host whose port is closed. */
  refuse(on: boolean): void {
    this.#refusing = on;
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((res) => this.#server.close(() => res()));
  }
}
