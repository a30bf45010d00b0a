// `moat serve` hashes the Merkle trees of several sources on its tree
// worker thread (cli/_tree_worker.ts), on Bun, Deno and from the release
// binary, where the worker's entry is a second entrypoint: the thread does
// the work, the vault verifies, and no tree_worker_failed is audited.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import {
  finished,
  moatFlavor,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
} from "./_e2e.ts";

/** CPU ticks of each thread whose name matches in process `pid`. */
function threadTicks(pid: number, name: RegExp): number[] {
  const ticks: number[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8")
      .trim();
    if (!name.test(comm)) continue;
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks.push(Number(fields[11]) + Number(fields[12]));
  }
  return ticks;
}

test("moat serve: two sources shipping at once are hashed on the tree worker thread, and the vault verifies", async () => {
  if (process.platform !== "linux") return;
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer(["--vault", vault]);
  const lines = Array.from(
    { length: 60_000 },
    (_, i) => `record ${i} ${"w".repeat(i % 90)}\n`,
  );
  // Both shippers are connected before the bulk of their lines is written:
  // the server sends a chunk to the worker while more than one source
  // appends, and two processes started together may not overlap otherwise.
  const children = ["one", "two"].map((name) =>
    spawnMoat([
      "ship",
      "-",
      "--server",
      `127.0.0.1:${server.port}`,
      "--state",
      path.join(dir.dir, `${name}.json`),
      "--source",
      name,
    ])
  );
  const done = children.map((child) => finished(child, 120_000));
  let shipped;
  try {
    for (const child of children) child.stdin!.write(lines[0]);
    for (const name of ["one", "two"]) {
      await server.waitEvent(
        (e) => e.event === "ship_started" && e.source === name,
        `ship_started of ${name}`,
      );
    }
    for (const child of children) child.stdin!.end(lines.slice(1).join(""));
    shipped = await Promise.all(done);
  } finally {
    // A shipper left waiting by a failed step is not left running.
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) child.kill();
    }
  }
  for (const r of shipped) {
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /60000 records acknowledged/);
  }
  // Bun names a worker's thread "Worker", Deno "worker-N".
  const workers = threadTicks(server.child.pid!, /^(Worker|worker-\d+)$/);
  assert.equal(workers.length, 1, `${moatFlavor()}: no tree worker thread`);
  // 120,000 records, 0.4 µs (Bun) to 2 µs (Deno) each: many 10 ms ticks.
  assert.ok(workers[0]! > 0, "the tree worker did no work");
  assert.equal(await server.stop(), 0);
  assert.deepEqual(
    server.events().filter((e) =>
      e.event === "vault_tree" && e.type === "tree_worker_failed"
    ),
    [],
  );
  const verify = await runMoat(["vault", "verify", vault]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  assert.match(verify.stdout, /OK/);
});
