'use strict';
// End-to-end tests of the Node.js client against a running rustaid daemon.
//
// They need a daemon; the Python test suite starts one with a synthetic model and
// runs `node --test clients/node/test/` with:
//   RUSTAID_TEST_ADDRESS  the daemon's address, e.g. unix:///tmp/x/rustaid.sock
//   RUSTAID_TEST_MODEL    the id of an LLM the daemon serves (optional: the first
//                         LLM that ListModels reports is used when unset)
// Without RUSTAID_TEST_ADDRESS every test is skipped.

const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { describe, test, before, after } = require('node:test');

const rustaid = require('../rustaid');

const { grpc } = rustaid;
const ADDRESS = process.env.RUSTAID_TEST_ADDRESS || '';
const SKIP_REASON = 'RUSTAID_TEST_ADDRESS is not set (no daemon to test against)';
const GENERATE_JS = path.join(__dirname, '..', 'generate.js');
const MAX_TOKENS = 8;
const CALL_TIMEOUT_MS = 60_000;
const FINISH_REASONS = new Set(['FINISH_REASON_LENGTH', 'FINISH_REASON_STOP']);

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS);
}

/** Resolves with every message of a server stream, or rejects with its error. */
function collect(call) {
  return new Promise((resolve, reject) => {
    const messages = [];
    let ended = false;
    let status = null;
    const settle = () => {
      if (ended && status !== null && status.code === grpc.status.OK) resolve(messages);
    };
    call.on('data', (message) => messages.push(message));
    call.on('error', reject);
    call.on('status', (s) => {
      status = s;
      settle();
    });
    call.on('end', () => {
      ended = true;
      settle();
    });
  });
}

/** An assert.rejects validator that names the codes when they differ. */
function hasStatus(expected) {
  return (err) => {
    assert.equal(
      rustaid.statusName(err.code),
      rustaid.statusName(expected),
      `expected ${rustaid.statusName(expected)}, got ${rustaid.statusName(err.code)}: ${err.details}`,
    );
    return true;
  };
}

function runGenerateJs(args) {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [GENERATE_JS, ...args],
      { timeout: CALL_TIMEOUT_MS, env: { ...process.env, RUSTAID_ADDRESS: '' } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, signal: err ? err.signal : null, stdout, stderr });
      },
    );
  });
}

describe('rustaid Node.js client', () => {
  let client = null;
  let model = process.env.RUSTAID_TEST_MODEL || '';

  before(async () => {
    if (!ADDRESS) return;
    client = rustaid.connect(ADDRESS);
    if (!model) {
      const response = await new Promise((resolve, reject) => {
        client.models.listModels({ kind: 'MODEL_KIND_LLM' }, { deadline: deadline() }, (err, res) =>
          err ? reject(err) : resolve(res),
        );
      });
      assert.ok(response.models.length > 0, 'the daemon lists no LLM and RUSTAID_TEST_MODEL is not set');
      model = response.models[0].id;
    }
  });

  after(() => {
    if (client !== null) client.close();
  });

  test('ListModels reports the test model', async (t) => {
    if (!ADDRESS) return t.skip(SKIP_REASON);
    const response = await new Promise((resolve, reject) => {
      client.models.listModels({}, { deadline: deadline() }, (err, res) => (err ? reject(err) : resolve(res)));
    });
    const ids = response.models.map((m) => m.id);
    assert.ok(ids.includes(model), `model ${model} not in ${JSON.stringify(ids)}`);
  });

  test('GenerateStream yields chunks, then one done message', async (t) => {
    if (!ADDRESS) return t.skip(SKIP_REASON);
    const call = client.generate.generateStream(
      { modelId: model, prompt: 'Once upon a time', params: { maxTokens: MAX_TOKENS, temperature: 0, seed: 1 } },
      { deadline: deadline() },
    );
    const messages = await collect(call);

    const events = messages.map((m) => m.event);
    const chunks = messages.filter((m) => m.event === 'chunk').map((m) => m.chunk);
    const dones = messages.filter((m) => m.event === 'done').map((m) => m.done);
    assert.ok(chunks.length >= 1, `no chunk in ${JSON.stringify(events)}`);
    assert.equal(dones.length, 1, `expected exactly one done in ${JSON.stringify(events)}`);
    assert.equal(events[events.length - 1], 'done', 'done must be the last message');
    assert.deepEqual(
      chunks.map((c) => c.index),
      chunks.map((_, i) => i),
      'chunk indexes count from 0',
    );

    const done = dones[0];
    assert.equal(done.modelId, model);
    assert.ok(FINISH_REASONS.has(done.finishReason), `unexpected finish reason ${done.finishReason}`);
    assert.ok(done.usage.completionTokens > 0, 'usage.completionTokens must be > 0');
    assert.ok(done.usage.completionTokens <= MAX_TOKENS, `${done.usage.completionTokens} tokens > max_tokens ${MAX_TOKENS}`);
  });

  test('an unknown model gives NOT_FOUND', async (t) => {
    if (!ADDRESS) return t.skip(SKIP_REASON);
    const call = client.generate.generateStream(
      { modelId: 'no-such-model-for-the-node-test', prompt: 'Hello', params: { maxTokens: MAX_TOKENS } },
      { deadline: deadline() },
    );
    await assert.rejects(collect(call), hasStatus(grpc.status.NOT_FOUND));
  });

  test('an empty prompt gives INVALID_ARGUMENT', async (t) => {
    if (!ADDRESS) return t.skip(SKIP_REASON);
    const call = client.generate.generateStream(
      { modelId: model, prompt: '', params: { maxTokens: MAX_TOKENS } },
      { deadline: deadline() },
    );
    await assert.rejects(collect(call), hasStatus(grpc.status.INVALID_ARGUMENT));
  });

  test('generate.js prints the text to stdout and exits 0', async (t) => {
    if (!ADDRESS) return t.skip(SKIP_REASON);
    const result = await runGenerateJs([
      '--address', ADDRESS, '--model', model, '--max-tokens', String(MAX_TOKENS), '--temperature', '0',
      'Once upon a time',
    ]);
    assert.equal(result.code, 0, `exit ${result.code} (signal ${result.signal}); stderr: ${result.stderr}`);
    assert.ok(result.stdout.length > 0, `no text on stdout; stderr: ${result.stderr}`);
    const escaped = model.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    assert.match(
      result.stderr,
      new RegExp(`^\\[model ${escaped}, [1-9]\\d* tokens, \\d+\\.\\d tok/s, finish (length|stop)\\]$`, 'm'),
    );
  });

  test('generate.js reports a gRPC error and exits 1', async (t) => {
    if (!ADDRESS) return t.skip(SKIP_REASON);
    const result = await runGenerateJs(['--address', ADDRESS, '--model', 'no-such-model-for-the-node-test', 'Hello']);
    assert.equal(result.code, 1, `exit ${result.code}; stderr: ${result.stderr}`);
    assert.match(result.stderr, /^error: NOT_FOUND: /m);
    assert.equal(result.stdout, '');
  });
});
