#!/usr/bin/env node
'use strict';
// Streams a text generation from the rustaid daemon.
//
//   node generate.js [--address ADDR] [--model ID] [--max-tokens N] "prompt"
//
// The text goes to stdout as it arrives; a summary line goes to stderr:
//   [model tiny, 16 tokens, 412.3 tok/s, finish length]
// On a gRPC error it prints `error: CODE: details` to stderr and exits 1.

const { parseArgs } = require('node:util');
const rustaid = require('./rustaid');

const USAGE = `usage: node generate.js [options] "prompt"

options:
  --address ADDR      daemon address (default: $RUSTAID_ADDRESS or
                      unix://$XDG_RUNTIME_DIR/rustaid/rustaid.sock)
  --model ID          model id (default: the daemon's router picks one)
  --max-tokens N      maximum number of tokens to generate
  --temperature T     sampling temperature (0 is greedy)
  --seed N            fixed seed for reproducible output
  --timeout SECONDS   give up after this long (default: no deadline)
  -h, --help          show this help
`;

function fail(message, exitCode = 2) {
  process.stderr.write(`${message}\n`);
  process.exit(exitCode);
}

function parseNumber(name, text, { integer = false, min = -Infinity } = {}) {
  const value = Number(text);
  if (text === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min) {
    fail(`generate.js: --${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${JSON.stringify(text)}\n\n${USAGE}`);
  }
  return value;
}

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        address: { type: 'string' },
        model: { type: 'string', default: '' },
        'max-tokens': { type: 'string' },
        temperature: { type: 'string' },
        seed: { type: 'string' },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    fail(`generate.js: ${err.message}\n\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  if (positionals.length === 0) {
    fail(`generate.js: a prompt is required\n\n${USAGE}`);
  }

  const params = {};
  if (values['max-tokens'] !== undefined) {
    params.maxTokens = parseNumber('max-tokens', values['max-tokens'], { integer: true, min: 1 });
  }
  if (values.temperature !== undefined) {
    params.temperature = parseNumber('temperature', values.temperature, { min: 0 });
  }
  if (values.seed !== undefined) {
    params.seed = parseNumber('seed', values.seed, { integer: true, min: 0 });
  }
  return {
    address: values.address || rustaid.defaultAddress(),
    request: { modelId: values.model, prompt: positionals.join(' '), params },
    timeoutSeconds: values.timeout === undefined ? null : parseNumber('timeout', values.timeout, { min: 0 }),
  };
}

function shortEnum(value, prefix) {
  return String(value).startsWith(prefix) ? String(value).slice(prefix.length).toLowerCase() : String(value);
}

function summary(done) {
  const tokens = done.usage ? done.usage.completionTokens : 0;
  const rate = done.timings ? done.timings.tokensPerSecond : 0;
  const finish = shortEnum(done.finishReason, 'FINISH_REASON_');
  return `[model ${done.modelId}, ${tokens} tokens, ${rate.toFixed(1)} tok/s, finish ${finish}]`;
}

function main() {
  const { address, request, timeoutSeconds } = parseCommandLine(process.argv.slice(2));
  const client = rustaid.connect(address);
  const callOptions = {};
  if (timeoutSeconds !== null) {
    callOptions.deadline = new Date(Date.now() + timeoutSeconds * 1000);
  }

  // `| head` closing the pipe is not an error worth a stack trace.
  process.stdout.on('error', (err) => {
    if (err.code !== 'EPIPE') throw err;
  });

  let done = null;
  let wroteText = false;
  let failed = false;
  const call = client.generate.generateStream(request, callOptions);
  process.once('SIGINT', () => call.cancel());

  call.on('data', (message) => {
    switch (message.event) {
      case 'chunk':
        if (message.chunk.text) {
          process.stdout.write(message.chunk.text);
          wroteText = true;
        }
        break;
      case 'queued':
        process.stderr.write(`[waiting for model ${message.queued.modelId}, position ${message.queued.position}]\n`);
        break;
      case 'done':
        done = message.done;
        break;
      default:
        break; // an event this client does not know yet
    }
  });

  call.on('error', (err) => {
    failed = true;
    if (wroteText && process.stdout.isTTY) process.stdout.write('\n');
    const code = rustaid.statusName(err.code);
    let line = `error: ${code}: ${err.details || err.message}`;
    if (err.code === rustaid.grpc.status.UNAVAILABLE) {
      line += ` (is the daemon listening on ${address}?)`;
    }
    process.stderr.write(`${line}\n`);
    process.exitCode = err.code === rustaid.grpc.status.CANCELLED ? 130 : 1;
    client.close();
  });

  // grpc-js may also end the stream after an error; the error handler has spoken.
  call.on('end', () => {
    if (failed) return;
    if (wroteText && process.stdout.isTTY) process.stdout.write('\n');
    if (done === null) {
      process.stderr.write('error: the stream ended without a done message\n');
      process.exitCode = 1;
    } else {
      process.stderr.write(`${summary(done)}\n`);
    }
    client.close();
  });
}

main();
