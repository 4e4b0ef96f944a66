// Drives fastgw with the Node clients users use: the Vercel AI SDK (its OpenAI provider's default
// Responses model, its chat model, the OpenAI-compatible provider) and the official openai-node SDK.
//
// Input (stdin): {"cases": [{"id", "client", "mode", "baseURL", "apiKey", "model", "prompt"}]}.
// Output (stdout): one JSON line per case, in order:
//   {"id", "text", "parts", "toolCalls": [{"name", "args"}], "finishReason", "error": null | {"name", "message"}}
// `parts` counts the non-empty text pieces a stream delivered (1 for a whole answer). A case that throws is
// reported with its error and the run goes on; the exit status is 0 unless the input itself is wrong.
//
// Clients: ai-openai (createOpenAI()(model): /v1/responses), ai-openai-chat (createOpenAI().chat(model):
// /v1/chat/completions), ai-compatible (createOpenAICompatible()(model)), openai-chat
// (client.chat.completions.create), openai-responses (client.responses.create).
// Modes: stream and generate (text), tool and tool-stream (one tool, tool choice "required").
import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, jsonSchema, streamText, tool } from 'ai';
import OpenAI from 'openai';
import { z } from 'zod';

// Each case's own limit: a gateway that stops answering fails that case, not the whole run.
const CASE_TIMEOUT_MS = 20_000;

// The tool every tool case offers; the AI SDK gets it as a zod schema, openai-node as JSON Schema.
const TOOL_NAME = 'get_weather';
const TOOL_DESCRIPTION = 'The current weather at a place.';
const TOOL_PARAMETERS = {
  type: 'object',
  properties: {
    location: { type: 'string', description: 'City and region, e.g. Paris' },
    unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
  },
  required: ['location', 'unit'],
  additionalProperties: false,
};
const zodWeather = z.object({
  location: z.string().describe('City and region, e.g. Paris'),
  unit: z.enum(['celsius', 'fahrenheit']),
});

function aiModel(c) {
  const settings = { baseURL: c.baseURL, apiKey: c.apiKey };
  switch (c.client) {
    case 'ai-openai':
      return createOpenAI(settings)(c.model);
    case 'ai-openai-chat':
      return createOpenAI(settings).chat(c.model);
    case 'ai-compatible':
      return createOpenAICompatible({ ...settings, name: 'fastgw', includeUsage: true })(c.model);
    default:
      throw new Error(`unknown client ${c.client}`);
  }
}

function errorOf(e) {
  // openai-node's errors are all named "Error": their class (BadRequestError, APIConnectionError ...) says more.
  const name = e?.name && e.name !== 'Error' ? e.name : (e?.constructor?.name ?? typeof e);
  return { name, message: String(e?.message ?? e) };
}

function result(c, fields) {
  return { id: c.id, text: '', parts: 0, toolCalls: [], finishReason: null, error: null, ...fields };
}

async function runAi(c, signal) {
  const model = aiModel(c);
  // maxRetries 0: a failing call shows its first error instead of the last retry's.
  const base = { model, prompt: c.prompt, maxRetries: 0, abortSignal: signal };
  // The zod schema for the AI SDK's own provider, jsonSchema() for the compatible one: both kinds users write.
  const inputSchema = c.client === 'ai-compatible' ? jsonSchema(TOOL_PARAMETERS) : zodWeather;
  const tools = { [TOOL_NAME]: tool({ description: TOOL_DESCRIPTION, inputSchema }) };
  const withTool = c.mode.startsWith('tool') ? { tools, toolChoice: 'required' } : {};
  const calls = (list) => list.map((t) => ({ name: t.toolName, args: t.input }));
  if (c.mode === 'generate' || c.mode === 'tool') {
    const r = await generateText({ ...base, ...withTool });
    return result(c, { text: r.text, parts: r.text ? 1 : 0, toolCalls: calls(r.toolCalls), finishReason: r.finishReason });
  }
  // Streams report provider errors as parts, not exceptions: the first one fails the case.
  let streamError = null;
  const r = streamText({ ...base, ...withTool, onError: ({ error }) => { streamError ??= error; } });
  const pieces = [];
  for await (const part of r.fullStream) {
    if (part.type === 'text-delta' && part.text) pieces.push(part.text);
    if (part.type === 'error') streamError ??= part.error;
  }
  if (streamError) throw streamError;
  // These reject (NoOutputGeneratedError, ToolChoiceViolationError) when the stream produced no valid output.
  const [text, toolCalls, finishReason] = await Promise.all([r.text, r.toolCalls, r.finishReason]);
  return result(c, { text, parts: pieces.length, toolCalls: calls(toolCalls), finishReason, streamed: pieces.join('') });
}

function openaiClient(c) {
  return new OpenAI({ baseURL: c.baseURL, apiKey: c.apiKey, maxRetries: 0, timeout: CASE_TIMEOUT_MS });
}

const parseArgs = (s) => (s ? JSON.parse(s) : {});

async function runOpenaiChat(c, signal) {
  const client = openaiClient(c);
  const messages = [{ role: 'user', content: c.prompt }];
  const withTool = c.mode.startsWith('tool')
    ? { tools: [{ type: 'function', function: { name: TOOL_NAME, description: TOOL_DESCRIPTION, parameters: TOOL_PARAMETERS } }],
        tool_choice: 'required' }
    : {};
  const stream = c.mode === 'stream' || c.mode === 'tool-stream';
  if (!stream) {
    const r = await client.chat.completions.create({ model: c.model, messages, ...withTool }, { signal });
    const msg = r.choices[0].message;
    const toolCalls = (msg.tool_calls ?? []).map((t) => ({ name: t.function.name, args: parseArgs(t.function.arguments) }));
    const text = msg.content ?? '';
    return result(c, { text, parts: text ? 1 : 0, toolCalls, finishReason: r.choices[0].finish_reason });
  }
  const s = await client.chat.completions.create(
    { model: c.model, messages, stream: true, stream_options: { include_usage: true }, ...withTool }, { signal });
  const pieces = [];
  const calls = new Map(); // index -> {name, arguments}
  let finishReason = null;
  for await (const chunk of s) {
    for (const choice of chunk.choices) {
      if (choice.delta?.content) pieces.push(choice.delta.content);
      for (const t of choice.delta?.tool_calls ?? []) {
        const call = calls.get(t.index) ?? { name: '', arguments: '' };
        call.name += t.function?.name ?? '';
        call.arguments += t.function?.arguments ?? '';
        calls.set(t.index, call);
      }
      finishReason = choice.finish_reason ?? finishReason;
    }
  }
  const toolCalls = [...calls.values()].map((t) => ({ name: t.name, args: parseArgs(t.arguments) }));
  return result(c, { text: pieces.join(''), parts: pieces.length, toolCalls, finishReason });
}

async function runOpenaiResponses(c, signal) {
  const client = openaiClient(c);
  const withTool = c.mode.startsWith('tool')
    ? { tools: [{ type: 'function', name: TOOL_NAME, description: TOOL_DESCRIPTION, parameters: TOOL_PARAMETERS, strict: true }],
        tool_choice: 'required' }
    : {};
  const stream = c.mode === 'stream' || c.mode === 'tool-stream';
  const outputText = (output) => output.filter((o) => o.type === 'message')
    .flatMap((o) => o.content).filter((p) => p.type === 'output_text').map((p) => p.text).join('');
  const calls = (output) => output.filter((o) => o.type === 'function_call')
    .map((o) => ({ name: o.name, args: parseArgs(o.arguments) }));
  if (!stream) {
    const r = await client.responses.create({ model: c.model, input: c.prompt, ...withTool }, { signal });
    return result(c, { text: r.output_text, parts: r.output_text ? 1 : 0, toolCalls: calls(r.output), finishReason: r.status });
  }
  const s = await client.responses.create({ model: c.model, input: c.prompt, stream: true, ...withTool }, { signal });
  const pieces = [];
  let final = null;
  let failure = null;
  for await (const ev of s) {
    if (ev.type === 'response.output_text.delta' && ev.delta) pieces.push(ev.delta);
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') final = ev.response;
    if (ev.type === 'response.failed') failure = ev.response?.error ?? ev;
    if (ev.type === 'error') failure = ev;
  }
  if (failure) throw Object.assign(new Error(failure.message ?? JSON.stringify(failure)), { name: 'ResponseStreamError' });
  if (!final) throw Object.assign(new Error('the stream ended without response.completed'), { name: 'ResponseStreamError' });
  return result(c, { text: pieces.join(''), parts: pieces.length, toolCalls: calls(final.output), finishReason: final.status,
                     completedText: outputText(final.output) });
}

async function runCase(c) {
  const signal = AbortSignal.timeout(CASE_TIMEOUT_MS);
  try {
    if (c.client.startsWith('ai-')) return await runAi(c, signal);
    if (c.client === 'openai-chat') return await runOpenaiChat(c, signal);
    if (c.client === 'openai-responses') return await runOpenaiResponses(c, signal);
    throw new Error(`unknown client ${c.client}`);
  } catch (e) {
    return result(c, { error: errorOf(e) });
  }
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const { cases } = await readStdin();
for (const c of cases) {
  process.stdout.write(JSON.stringify(await runCase(c)) + '\n');
}
