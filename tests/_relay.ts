/**
 * A TCP relay for end-to-end tests that holds a transfer still at a chosen
 * point, so a test can act while a get is mid-file however fast the machine.
 *
 * @module
 */

import * as net from "node:net";

/**
 * A TCP relay to `port` that stops reading from the server once `holdAfter`
 * bytes have come through, until `release()`: the server is then stuck
 * mid-send with its file open, however fast the machine.
 */
export async function holdingRelay(port: number, holdAfter: number) {
  let relayed = 0;
  let holding = false;
  let released = false;
  let onHeld = () => {};
  const held = new Promise<void>((r) => (onHeld = r));
  const upstreams = new Set<net.Socket>();
  const sockets = new Set<net.Socket>();
  const relay = net.createServer((client) => {
    const upstream = net.connect({ port, host: "127.0.0.1" });
    upstreams.add(upstream);
    sockets.add(client).add(upstream);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    client.pipe(upstream);
    upstream.on("data", (d: Uint8Array) => {
      relayed += d.length;
      if (!client.write(d)) {
        upstream.pause();
        client.once("drain", () => {
          if (!holding) upstream.resume();
        });
      }
      if (!released && !holding && relayed >= holdAfter) {
        holding = true;
        upstream.pause();
        onHeld();
      }
    });
    upstream.on("end", () => client.end());
    client.on("close", () => upstream.destroy());
  });
  await new Promise<void>((r) => relay.listen(0, "127.0.0.1", () => r()));
  return {
    port: (relay.address() as net.AddressInfo).port,
    held,
    release() {
      holding = false;
      released = true;
      for (const u of upstreams) u.resume();
    },
    [Symbol.asyncDispose]() {
      for (const socket of sockets) socket.destroy();
      return new Promise<void>((r) => relay.close(() => r()));
    },
  };
}
