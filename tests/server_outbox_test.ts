/**
 * Tests of `lib/server/outbox.ts`: one writer per connection, in order,
 * chunks that wait joined into few writes, and a failed write that closes.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { Outbox } from "../lib/server/outbox.ts";
import type { Session } from "../lib/server/session.ts";

/** A session whose writes wait until the test lets each one finish. */
function heldSession() {
  const writes: { bytes: Uint8Array; done: () => void; fail: () => void }[] =
    [];
  let closed = 0;
  let touched = 0;
  const session = {
    conn: {
      write: (bytes: Uint8Array) =>
        new Promise<void>((done, reject) =>
          writes.push({
            bytes: bytes.slice(),
            done,
            fail: () => reject(new Error("broken pipe")),
          })
        ),
    },
    touch: () => touched++,
    close: () => closed++,
  } as unknown as Session;
  return {
    session,
    writes,
    get closed() {
      return closed;
    },
    get touched() {
      return touched;
    },
  };
}

/** Lets queued callbacks run. */
function turn() {
  return new Promise((r) => setTimeout(r, 0));
}

test("Outbox writes the first chunk at once and joins those queued meanwhile into one write, in order", async () => {
  const h = heldSession();
  const out = new Outbox(h.session);
  assert.equal(out.push(Uint8Array.of(1)), true);
  // Written in the same turn, not a microtask later.
  assert.equal(h.writes.length, 1);
  for (let i = 2; i <= 1000; i++) out.push(Uint8Array.of(i & 0xff));
  assert.equal(out.pending, 1000);
  h.writes[0]!.done();
  await turn();
  // 999 chunks that waited: one write, not 999 (each waiting chunk once
  // cost a promise and a closure, ~200 bytes, eight times a short line).
  assert.equal(h.writes.length, 2);
  assert.deepEqual(
    [...h.writes[1]!.bytes],
    Array.from({ length: 999 }, (_, i) => (i + 2) & 0xff),
  );
  assert.equal(out.pending, 999);
  const flushed = out.flush();
  h.writes[1]!.done();
  await flushed;
  assert.equal(out.pending, 0);
  assert.equal(h.touched, 2);
  // Idle again: the next chunk is written at once.
  out.push(Uint8Array.of(7));
  assert.equal(h.writes.length, 3);
  h.writes[2]!.done();
  await out.flush();
});

test("Outbox joins at most 64 KiB into one write and keeps every byte in order", async () => {
  const h = heldSession();
  const out = new Outbox(h.session);
  const sent: number[] = [];
  const chunk = (n: number, fill: number) => {
    const bytes = new Uint8Array(n).fill(fill);
    sent.push(...bytes);
    out.push(bytes);
  };
  chunk(10, 0);
  for (let i = 1; i <= 20; i++) chunk(20_000, i);
  const got: number[] = [];
  while (out.pending > 0) {
    await turn();
    const w = h.writes.shift()!;
    assert.ok(w.bytes.length <= 65_536, `a write of ${w.bytes.length} bytes`);
    got.push(...w.bytes);
    w.done();
    await turn();
  }
  assert.deepEqual(got, sent);
  await out.flush();
});

test("Outbox closes the session on a failed write and drops what was queued", async () => {
  const h = heldSession();
  const out = new Outbox(h.session);
  out.push(Uint8Array.of(1));
  out.push(Uint8Array.of(2), 100);
  out.push(Uint8Array.of(3), 100);
  // Over the limit (3 bytes and two waiting chunks of 32 each, plus 8
  // bytes and a chunk): refused, nothing queued.
  assert.equal(out.push(new Uint8Array(8), 100), false);
  assert.equal(out.pending, 3);
  h.writes[0]!.fail();
  await out.flush();
  assert.equal(h.closed, 1);
  assert.equal(out.pending, 0);
  assert.equal(h.writes.length, 1, "nothing written after the failure");
});

test("Outbox counts each waiting chunk 32 bytes against the limit, so short lines cannot queue a slot each without bound", async () => {
  const h = heldSession();
  const out = new Outbox(h.session);
  out.push(Uint8Array.of(0));
  // One byte in flight; each waiting 1-byte chunk costs 33.
  let queued = 0;
  while (out.push(Uint8Array.of(1), 3300)) queued++;
  assert.equal(queued, 99);
  assert.equal(out.pending, 100);
  // Once written, the slots are free again.
  h.writes[0]!.done();
  await turn();
  h.writes[1]!.done();
  await out.flush();
  assert.equal(out.pending, 0);
  assert.equal(out.push(Uint8Array.of(2), 3300), true);
  h.writes[2]!.done();
  await out.flush();
});
