/**
 * The JetStream vault's protection below moat: a real nats-server cluster
 * with the account layout of docs/DEPLOY.md. moat's credentials may publish
 * and read but not delete messages, purge, update (turn the deny flags off)
 * or delete the stream; and the stream's own deny_delete / deny_purge refuse
 * message deletes and purges even to the admin who created it.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { tempDir } from "./_e2e.ts";
import {
  accountsConfig,
  createVaultStream,
  jsPublish,
  noNats,
  rawConnect,
  startNatsCluster,
  vaultStreamConfig,
} from "./_nats.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");

/** Publishes one message as `conn` and returns the JetStream ack's seq. */
async function publish(
  conn: Awaited<ReturnType<typeof rawConnect>>,
  subject: string,
  data: string,
): Promise<number> {
  const r = await conn.request(subject, data);
  assert.ok(r.ok, `publish to ${subject}: ${!r.ok && r.error}`);
  const ack = r.json() as { seq?: number; error?: unknown };
  assert.equal(ack.error, undefined, JSON.stringify(ack));
  assert.equal(typeof ack.seq, "number");
  return ack.seq!;
}

function permissionDenied(
  r: Record<string, unknown>,
  subject: string,
): void {
  assert.equal(
    r.permission,
    `-ERR 'Permissions Violation for Publish to "${subject}"'`,
    `expected a permissions violation, got ${JSON.stringify(r)}`,
  );
}

test(
  "JetStream accounts: moat's user cannot delete, purge, update or delete the stream; deny flags refuse even the admin",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-acct-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 3 });
    await createVaultStream(cluster);
    const S = cluster.stream;
    const port = cluster.nodes[1]!.clientPort;
    using moat = await rawConnect(port, cluster.users.moat);
    using admin = await rawConnect(port, cluster.users.admin);

    // moat may publish the vault's subjects and read the stream back.
    const seq1 = await publish(moat, "moat.moat.rec.aa", "one");
    const seq2 = await publish(moat, "moat.moat.rec.aa", "two");
    assert.equal(seq2, seq1 + 1);
    const info = await moat.api(`$JS.API.STREAM.INFO.${S}`);
    assert.equal(
      (info.state as { messages: number }).messages,
      2,
      JSON.stringify(info),
    );
    const got = await moat.api(`$JS.API.STREAM.MSG.GET.${S}`, { seq: seq1 });
    assert.equal(
      atob((got.message as { data: string }).data),
      "one",
      JSON.stringify(got),
    );
    // …but nothing outside them, and no other stream.
    permissionDenied(
      await moat.api("moat.other.rec.aa", "x"),
      "moat.other.rec.aa",
    );

    // moat's credentials: every administrative call is refused by the server
    // before JetStream sees it.
    const flagsOff = {
      ...vaultStreamConfig(S, cluster.subjects, 3),
      "deny_delete": false,
      "deny_purge": false,
    };
    for (
      const [subject, body] of [
        [`$JS.API.STREAM.MSG.DELETE.${S}`, { seq: seq1 }],
        [`$JS.API.STREAM.MSG.DELETE.${S}`, { seq: seq1, "no_erase": true }],
        [`$JS.API.STREAM.PURGE.${S}`, {}],
        [`$JS.API.STREAM.PURGE.${S}`, { filter: "moat.moat.rec.aa" }],
        [`$JS.API.STREAM.UPDATE.${S}`, flagsOff],
        [`$JS.API.STREAM.DELETE.${S}`, undefined],
        [`$JS.API.STREAM.CREATE.OTHER`, {
          ...vaultStreamConfig("OTHER", "other.>", 1),
          "deny_delete": false,
        }],
        [`$JS.API.STREAM.DELETE.OTHER`, undefined],
      ] as const
    ) {
      permissionDenied(await moat.api(subject, body), subject);
    }

    // The admin may call them, but the stream's flags refuse message deletes
    // and purges, and the flags cannot be turned off.
    const del = await admin.api(`$JS.API.STREAM.MSG.DELETE.${S}`, {
      seq: seq1,
    });
    assert.match(
      JSON.stringify(del.error),
      /message delete not permitted/,
      JSON.stringify(del),
    );
    const purge = await admin.api(`$JS.API.STREAM.PURGE.${S}`, {});
    assert.match(
      JSON.stringify(purge.error),
      /purge not permitted/,
      JSON.stringify(purge),
    );
    for (
      const [change, refusal] of [
        [{ "deny_delete": false }, "can not cancel deny message deletes"],
        [{ "deny_purge": false }, "can not cancel deny purge"],
        [
          { "allow_rollup_hdrs": true },
          "roll-ups require the purge permission",
        ],
      ] as const
    ) {
      const upd = await admin.api(`$JS.API.STREAM.UPDATE.${S}`, {
        ...vaultStreamConfig(S, cluster.subjects, 3),
        ...change,
      });
      assert.match(
        (upd.error as { description?: string } | undefined)?.description ?? "",
        new RegExp(refusal),
        JSON.stringify(upd),
      );
    }
    // Rollup headers are off too: a rollup message could purge a subject.
    const rollup = await admin.request(
      "moat.moat.rec.aa",
      "rollup",
      { "Nats-Rollup": "sub" },
    );
    assert.ok(rollup.ok);
    assert.match(
      JSON.stringify((rollup.json() as { error?: unknown }).error),
      /rollup not permitted/,
    );

    // Nothing was lost.
    const after = await moat.api(`$JS.API.STREAM.INFO.${S}`);
    const state = after.state as { messages: number; first_seq: number };
    assert.equal(state.messages, 2, JSON.stringify(after));
    assert.equal(state.first_seq, seq1);
    const cfg = after.config as {
      "deny_delete": boolean;
      "deny_purge": boolean;
    };
    assert.equal(cfg.deny_delete, true);
    assert.equal(cfg.deny_purge, true);

    // Whole-stream deletion is guarded by the account permission alone: the
    // admin can still do it, which is why moat must not hold admin credentials.
    const gone = await admin.api(`$JS.API.STREAM.DELETE.${S}`);
    assert.equal(gone.success, true, JSON.stringify(gone));
  },
);

test(
  "JetStream accounts: the account layout in docs/DEPLOY.md is the one the tests use",
  () => {
    const doc = fs.readFileSync(path.join(ROOT, "docs/DEPLOY.md"), "utf8");
    const shown = accountsConfig({
      admin: { nkey: "UADMIN…" },
      moat: { nkey: "UMOAT…" },
      sys: { user: "sys", password: "SYS-PASSWORD" },
    });
    assert.ok(
      doc.includes(shown),
      `docs/DEPLOY.md must show this accounts block verbatim:\n${shown}`,
    );
  },
);

test(
  "JetStream cluster: with one node SIGKILLed, publishes go on; restarted, it is healthy again",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-kill-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 3 });
    await createVaultStream(cluster);
    using moat = await rawConnect(
      cluster.nodes[1]!.clientPort,
      cluster.users.moat,
    );
    const before = await publish(moat, "moat.moat.rec.bb", "before");
    await cluster.kill(0);
    assert.equal(cluster.nodes[0]!.child, undefined);
    // If the killed node led the stream, the other two elect a new leader;
    // meanwhile a publish gets a 503 (no responders) or no answer at all
    // (a replica without a leader drops it), and is resent under the same
    // Nats-Msg-Id, as the JetStream client in a door resends: stored once.
    const during = await jsPublish(moat, "moat.moat.rec.bb", "during", {
      "Nats-Msg-Id": "during",
    });
    assert.equal(during, before + 1);
    await cluster.restart(0);
    using again = await rawConnect(
      cluster.nodes[0]!.clientPort,
      cluster.users.moat,
    );
    assert.equal(await publish(again, "moat.moat.rec.bb", "after"), before + 2);
  },
);
