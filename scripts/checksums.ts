// deno-lint-ignore-file no-console
/**
 * Writes `<dir>/SHA256SUMS` for the release files `<dir>/moat-*`, in the
 * format `sha256sum -c` reads. Runs on Deno (`deno run --allow-read=dist
 * --allow-write=dist scripts/checksums.ts dist`) and Bun, on any OS.
 *
 * @module
 */

import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";

const dir = process.argv[2] ?? "dist";
const names = fs.readdirSync(dir)
  .filter((n) =>
    n.startsWith("moat-") && fs.statSync(path.join(dir, n)).isFile()
  )
  .sort();
if (names.length === 0) {
  console.error(`checksums: no moat-* files in "${dir}"`);
  process.exit(1);
}
let text = "";
for (const name of names) {
  const hash = createHash("sha256");
  const fd = fs.openSync(path.join(dir, name), "r");
  const buf = new Uint8Array(1 << 20);
  let n: number;
  while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) {
    hash.update(buf.subarray(0, n));
  }
  fs.closeSync(fd);
  text += `${hash.digest("hex")}  ${name}\n`;
}
fs.writeFileSync(path.join(dir, "SHA256SUMS"), text);
console.log(`wrote ${path.join(dir, "SHA256SUMS")} (${names.length} files)`);
