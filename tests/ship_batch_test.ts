// The shipper never sends a batch the vault refuses: a stream of empty lines
// (the most records per wire byte there is) goes out in batches of at most
// DEFAULT_MAX_BATCH_RECORDS records, each one vault append.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as path from "node:path";
import { DEFAULT_MAX_BATCH_RECORDS } from "../lib/limits.ts";
import { listSources } from "../lib/vault/read.ts";
import { runMoat, startServer, tempDir } from "./_e2e.ts";

test("moat ship sends 20,000 empty lines in batches the vault takes", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer(["--vault", vault]);
  const count = 20_000;
  // One spool read holds all of them: without the cap they would go as
  // frames of ~25,000 records (512 KiB / 21 bytes), which the vault refuses.
  assert.ok(count > DEFAULT_MAX_BATCH_RECORDS * 4);
  const r = await runMoat([
    "ship",
    "-",
    "--server",
    `127.0.0.1:${server.port}`,
    "--state",
    path.join(dir.dir, "s.json"),
    "--source",
    "blank",
  ], { input: "\n".repeat(count) });
  assert.equal(r.code, 0, r.stderr);
  const refused = server.events().filter((e) => e.event === "error");
  assert.deepEqual(refused, []);
  await server.stop();
  const [source] = await listSources(vault);
  assert.equal(source?.records, count);
  assert.equal(source?.lastSeq, count);
});
