'use strict';
// The `openai` npm package against the daemon's OpenAI-compatible HTTP API.
//
// The Python test suite (tests/http/test_node_openai.py) starts a daemon with
// `http_listen` and the real SmolLM2 and MiniLM models, then runs this file with:
//   RUSTAID_TEST_HTTP_URL    the HTTP API's base URL, e.g. http://127.0.0.1:41234
//   RUSTAID_TEST_CHAT_MODEL  a chat model it serves
//   RUSTAID_TEST_EMBED_MODEL an embedding model it serves
// Without RUSTAID_TEST_HTTP_URL every test is skipped.

const assert = require('node:assert/strict');
const { describe, test } = require('node:test');

const URL = process.env.RUSTAID_TEST_HTTP_URL || '';
const CHAT = process.env.RUSTAID_TEST_CHAT_MODEL || '';
const EMBED = process.env.RUSTAID_TEST_EMBED_MODEL || '';
const SKIP = URL ? false : 'RUSTAID_TEST_HTTP_URL is not set (no daemon to test against)';
const HELLO = [{ role: 'user', content: 'Say hello in one short sentence.' }];

function client() {
  const { OpenAI } = require('openai');
  return new OpenAI({ baseURL: `${URL}/v1`, apiKey: 'unused', maxRetries: 0 });
}

describe('openai npm package against the HTTP API', { skip: SKIP }, () => {
  test('lists the models', async () => {
    const ids = [];
    for await (const model of client().models.list()) ids.push(model.id);
    assert.ok(ids.includes(CHAT) && ids.includes(EMBED), ids.join(', '));
  });

  test('answers a chat completion with usage', async () => {
    const reply = await client().chat.completions.create({
      model: CHAT, messages: HELLO, max_tokens: 16, temperature: 0,
    });
    assert.equal(reply.choices[0].message.role, 'assistant');
    assert.ok(reply.choices[0].message.content.trim());
    assert.ok(reply.usage.completion_tokens <= 16);
  });

  test('streams a chat completion', async () => {
    const stream = await client().chat.completions.create({
      model: CHAT, messages: HELLO, max_tokens: 12, stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    for await (const chunk of stream) {
      if (chunk.choices.length) text += chunk.choices[0].delta.content || '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.ok(text.trim());
    assert.ok(usage && usage.completion_tokens <= 12);
  });

  test('returns a tool call', async () => {
    const reply = await client().chat.completions.create({
      model: CHAT,
      messages: [{ role: 'user', content: 'What is the weather in Rome?' }],
      tools: [{
        type: 'function',
        function: {
          name: 'get_weather',
          parameters: {
            type: 'object',
            properties: { city: { type: 'string', maxLength: 30 } },
            required: ['city'],
          },
        },
      }],
      tool_choice: 'required',
      max_tokens: 40,
    });
    const call = reply.choices[0].message.tool_calls[0];
    assert.equal(call.function.name, 'get_weather');
    assert.equal(typeof JSON.parse(call.function.arguments).city, 'string');
  });

  test('embeds texts', async () => {
    const reply = await client().embeddings.create({ model: EMBED, input: ['a cat', 'a dog'] });
    assert.equal(reply.data.length, 2);
    assert.equal(reply.data[0].embedding.length, 384);
  });

  test('an unknown model is a NotFoundError', async () => {
    const { NotFoundError } = require('openai');
    await assert.rejects(
      client().chat.completions.create({ model: 'no-such-model', messages: HELLO }),
      (err) => err instanceof NotFoundError && err.message.includes(CHAT),
    );
  });
});
