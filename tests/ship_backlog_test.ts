import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ShipBacklog } from "../lib/ship/backlog.ts";
import { seededRandom } from "./_test_utils.ts";

/** The reference: every unacknowledged record's length, by sequence number. */
class Model {
  lengths = new Map<number, number>();
  acked: number;
  ackedLines = 0;

  constructor(acked: number) {
    this.acked = acked;
  }

  add(first: number, lengths: number[]) {
    lengths.forEach((n, i) => {
      if (first + i > this.acked) this.lengths.set(first + i, n);
    });
  }

  ack(seq: number) {
    if (seq <= this.acked) return;
    this.ackedLines += seq - this.acked;
    for (const s of [...this.lengths.keys()]) {
      if (s <= seq) this.lengths.delete(s);
    }
    this.acked = seq;
  }

  get lines() {
    const last = Math.max(this.acked, ...this.lengths.keys());
    return last - this.acked;
  }

  get bytes() {
    let n = 0;
    for (const v of this.lengths.values()) n += v;
    return n;
  }
}

describe("ShipBacklog", () => {
  test("ShipBacklog counts lines and bytes like a reference model over random adds and acks", () => {
    const random = seededRandom(1414);
    let grown = 0;
    let partial = 0;
    for (let round = 0; round < 40; round++) {
      const start = random(1000);
      const backlog = new ShipBacklog(start);
      const model = new Model(start);
      let next = start + 1;
      for (let step = 0; step < 400; step++) {
        const r = random(100);
        if (r < 55) {
          // A batch, sometimes large enough that the ring grows.
          const n = random(20) === 0 ? 3000 : 1 + random(40);
          if (n === 3000) grown++;
          const lengths = Array.from({ length: n }, () => random(300));
          backlog.add(next, lengths);
          model.add(next, lengths);
          next += n;
        } else if (r < 95) {
          // An acknowledgement anywhere up to what was added.
          const seq = model.acked + random(next - model.acked);
          if (seq < next - 1) partial++;
          backlog.ack(seq);
          model.ack(seq);
        } else {
          backlog.ack(model.acked - 1);
        }
        assert.equal(backlog.lines, model.lines, `round ${round} step ${step}`);
        assert.equal(backlog.bytes, model.bytes, `round ${round} step ${step}`);
        assert.equal(backlog.ackedLines, model.ackedLines);
      }
    }
    assert.ok(
      grown > 10 && partial > 1000,
      `${grown} growths, ${partial} partial acks`,
    );
  });

  test("ShipBacklog takes batches out of order and the same batch twice", () => {
    const backlog = new ShipBacklog();
    backlog.add(4, [40, 50]);
    assert.deepEqual([backlog.lines, backlog.bytes], [5, 90]);
    backlog.add(1, [10, 20, 30]);
    backlog.add(1, [10, 20, 30]);
    assert.deepEqual([backlog.lines, backlog.bytes], [5, 150]);
    backlog.ack(2);
    assert.deepEqual([backlog.lines, backlog.bytes], [3, 120]);
  });

  test("ShipBacklog skips records acknowledged before they are added", () => {
    const backlog = new ShipBacklog();
    backlog.ack(3);
    backlog.add(1, [1, 2, 3, 4, 5]);
    assert.deepEqual([backlog.lines, backlog.bytes, backlog.ackedLines], [
      2,
      9,
      3,
    ]);
    backlog.ack(1_000_000);
    assert.deepEqual([backlog.lines, backlog.bytes], [0, 0]);
    assert.equal(backlog.ackedLines, 1_000_000);
    backlog.add(1_000_001, [7]);
    assert.deepEqual([backlog.lines, backlog.bytes], [1, 7]);
  });

  test("ShipBacklog keeps counting after a long outage is acknowledged", () => {
    const backlog = new ShipBacklog();
    backlog.add(1, new Array(200_000).fill(3));
    assert.deepEqual([backlog.lines, backlog.bytes], [200_000, 600_000]);
    backlog.ack(200_000);
    backlog.add(200_001, [5, 6]);
    backlog.ack(200_001);
    assert.deepEqual([backlog.lines, backlog.bytes, backlog.ackedLines], [
      1,
      6,
      200_001,
    ]);
  });

  test("ShipBacklog.reset starts after the given sequence number and keeps ackedLines", () => {
    const backlog = new ShipBacklog();
    backlog.add(1, new Array(5000).fill(10));
    backlog.ack(100);
    backlog.reset(4000);
    assert.deepEqual([backlog.lines, backlog.bytes, backlog.ackedLines], [
      0,
      0,
      100,
    ]);
    backlog.add(4001, [3, 4]);
    assert.deepEqual([backlog.lines, backlog.bytes], [2, 7]);
  });

  test("ShipBacklog refuses a sequence number that is not a positive integer", () => {
    const backlog = new ShipBacklog();
    for (const bad of [0, -1, 1.5, NaN]) {
      assert.throws(() => backlog.add(bad, [1]), RangeError);
    }
  });
});
