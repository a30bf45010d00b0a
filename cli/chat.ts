/**
 * `moat chat`: talk with the server's operator and other clients, line by
 * line.
 *
 * @module
 */

import { chat } from "../lib/client.ts";
import { escapeText } from "../lib/text.ts";
import {
  CLIENT_EXITS,
  clientOptions,
  SERVER_OPTION,
  TIMEOUT_OPTION,
} from "./_client.ts";
import { stdinLines } from "./_stdin.ts";
import {
  type CommandSpec,
  formatHelp,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine, printNote } from "./output.ts";
import { CLIENT_SECURITY_ENV, CLIENT_SECURITY_OPTIONS } from "./secure_cli.ts";

const CHAT_OPTIONS = {
  server: SERVER_OPTION,
  timeout: {
    ...TIMEOUT_OPTION,
    description:
      `${TIMEOUT_OPTION.description}; also the longest wait for its last lines after the input ends`,
  },
  ...CLIENT_SECURITY_OPTIONS,
} as const satisfies OptionTable;

/** `moat chat`'s options, usage and help. */
export const CHAT: CommandSpec<typeof CHAT_OPTIONS> = {
  name: "chat",
  summary: "Talk with the server's operator and other clients, line by line",
  usage: ["chat [options]"],
  description:
    `Send each line typed on stdin; print each line received, tagged with its sender.
Members joining and leaving are shown as [server] lines; /who lists the members
(to you alone). Ctrl-D (end of input) leaves: like nc -N, moat then closes its
sending side and still prints what the server sends (the answer to a last
line, as in echo hi | moat chat) until the server closes, 2 s pass without a
line, or --timeout passes.`,
  options: CHAT_OPTIONS,
  env: CLIENT_SECURITY_ENV,
  exits: CLIENT_EXITS,
};

/**
 * Runs `moat chat` until stdin ends or the server closes.
 *
 * @param args The arguments after "chat".
 * @param context The environment.
 * @throws {MoatError} With the exit status of what went wrong.
 */
export async function chatCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(CHAT, args, context);
  if (parsed.help) return printLine(formatHelp(CHAT));
  const { values } = parsed;
  await chat(clientOptions(values, context.env), {
    input: stdinLines(),
    output: printLine,
    onWelcome: (w) =>
      printNote(
        // The Welcome's fields come escaped from lib/client.ts.
        `connected to ${
          escapeText(values.server)
        } as ${w.name} (${w.peer}); Ctrl-D leaves`,
      ),
  });
}
