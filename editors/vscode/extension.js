// Starts `nncompile lsp` (the command in the setting nncompile.server.command) for .nn files.
// Highlighting needs none of this: it is the TextMate grammar in syntaxes/.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

async function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("nncompile").get("server.command");
  if (!command) {
    return;
  }
  client = new LanguageClient(
    "nncompile",
    "nncompile",
    { command, args },   // stdio, as `nncompile lsp` speaks
    { documentSelector: [{ language: "nn" }] },
  );
  context.subscriptions.push(client);
  try {
    await client.start();
  } catch (error) {
    vscode.window.showErrorMessage(
      `nncompile: could not start "${[command, ...args].join(" ")}" (${error.message}). ` +
      "Install the language server with pip install 'nncompile[editor]', or set nncompile.server.command.");
  }
}

async function deactivate() {
  if (client) {
    await client.stop();
  }
}

module.exports = { activate, deactivate };
