/*
 * test_chat_template.c - chat templates against llama.cpp.
 *
 * The conversation, the template strings and the expected renderings of the
 * first table are llama.cpp's own (tests/test-chat-template.cpp, the
 * "expected_output" of llama_chat_apply_template): each template string must
 * be detected as the right format and the conversation rendered to exactly
 * those bytes.  The second table covers formats that test has no case for;
 * their expectations are written out by hand from llama.cpp's renderer
 * (src/llama-chat.cpp), not produced by ours.
 */
#include "testlib.h"
#include "base/base.h"

#include <string.h>

static const nm_chat_msg CONV[] = {
    {"system", "You are a helpful assistant"},
    {"user", "Hello"},
    {"assistant", "Hi there"},
    {"user", "Who are you"},
    {"assistant", "   I am an assistant   "},
    {"user", "Another question"},
};
#define N_CONV (sizeof CONV / sizeof CONV[0])

typedef struct tcase {
    const char *name;
    const char *tmpl; /* Jinja text as found in tokenizer.chat_template */
    nm_chat_template want;
    const char *expected; /* rendering of CONV with the assistant prefix */
} tcase;

static const tcase UPSTREAM[] = {
    {"teknium/OpenHermes-2.5-Mistral-7B",
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
     "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
     NM_CHAT_TEMPLATE_CHATML,
     "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>"
     "assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n   I am an "
     "assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n"},
    {"mistralai/Mistral-7B-Instruct-v0.2 (old, no system prompt)",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
     "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
     "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
     "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
     "are supported!') }}{% endif %}{% endfor %}",
     NM_CHAT_TEMPLATE_LLAMA2,
     "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   "
     "</s>[INST] Another question [/INST]"},
    {"TheBloke/FusionNet_34Bx2_MoE-AWQ",
     "{%- for idx in range(0, messages|length) -%}\n{%- if messages[idx]['role'] == 'user' -%}\n{%- if idx > 1 "
     "-%}\n{{- bos_token + '[INST] ' + messages[idx]['content'] + ' [/INST]' -}}\n{%- else -%}\n{{- "
     "messages[idx]['content'] + ' [/INST]' -}}\n{%- endif -%}\n{% elif messages[idx]['role'] == 'system' %}\n{{- "
     "'[INST] <<SYS>>\\n' + messages[idx]['content'] + '\\n<</SYS>>\\n\\n' -}}\n{%- elif messages[idx]['role'] == "
     "'assistant' -%}\n{{- ' '  + messages[idx]['content'] + ' ' + eos_token -}}\n{% endif %}\n{% endfor %}",
     NM_CHAT_TEMPLATE_LLAMA2_SYS_BOS,
     "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s><s>[INST] Who are you "
     "[/INST]   I am an assistant   </s><s>[INST] Another question [/INST]"},
    {"bofenghuang/vigogne-2-70b-chat",
     "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
     "system_message = messages[0]['content'] %}{% elif true == true and not '<<SYS>>' in messages[0]['content'] %}{% "
     "set loop_messages = messages %}{% set system_message = 'Vous êtes Vigogne, un assistant IA créé par Zaion "
     "Lab. Vous suivez extrêmement bien les instructions. Aidez autant que vous le pouvez.' %}{% else %}{% set "
     "loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if "
     "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
     "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set "
     "content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content "
     "= message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + content.strip() + ' "
     "[/INST]' }}{% elif message['role'] == 'system' %}{{ '<<SYS>>\\n' + content.strip() + '\\n<</SYS>>\\n\\n' }}{% "
     "elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
     NM_CHAT_TEMPLATE_LLAMA2_SYS_STRIP,
     "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]I "
     "am an assistant</s>[INST] Another question [/INST]"},
    {"mlabonne/AlphaMonarch-7B",
     "{% for message in messages %}{{bos_token + message['role'] + '\\n' + message['content'] + eos_token + "
     "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ bos_token + 'assistant\\n' }}{% endif %}",
     NM_CHAT_TEMPLATE_MONARCH,
     "system\nYou are a helpful assistant</s>\n<s>user\nHello</s>\n<s>assistant\nHi there</s>\n<s>user\nWho are "
     "you</s>\n<s>assistant\n   I am an assistant   </s>\n<s>user\nAnother question</s>\n<s>assistant\n"},
    {"google/gemma-7b-it",
     "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for "
     "message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
     "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
     "(message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif "
     "%}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if "
     "add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
     NM_CHAT_TEMPLATE_GEMMA,
     "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi "
     "there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an "
     "assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n"},
    {"OrionStarAI/Orion-14B-Chat",
     "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{% if message['role'] == 'user' %}{{ "
     "'Human: ' + message['content'] + '\\n\\nAssistant: ' + eos_token }}{% elif message['role'] == 'assistant' %}{{ "
     "message['content'] + eos_token }}{% endif %}{% endfor %}",
     NM_CHAT_TEMPLATE_ORION,
     "Human: You are a helpful assistant\n\nHello\n\nAssistant: </s>Hi there</s>Human: Who are you\n\nAssistant: "
     "</s>   I am an assistant   </s>Human: Another question\n\nAssistant: </s>"},
    {"openchat/openchat-3.5-0106",
     "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + ': ' + "
     "message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' "
     "}}{% endif %}",
     NM_CHAT_TEMPLATE_OPENCHAT,
     "You are a helpful assistant<|end_of_turn|>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant: Hi "
     "there<|end_of_turn|>GPT4 Correct User: Who are you<|end_of_turn|>GPT4 Correct Assistant:    I am an assistant "
     "  <|end_of_turn|>GPT4 Correct User: Another question<|end_of_turn|>GPT4 Correct Assistant:"},
    {"deepseek-ai/deepseek-coder-33b-instruct",
     "{% if not add_generation_prompt is defined %}\n{% set add_generation_prompt = false %}\n{% endif %}\n{%- set ns "
     "= namespace(found=false) -%}\n{%- for message in messages -%}\n    {%- if message['role'] == 'system' -%}\n     "
     "   {%- set ns.found = true -%}\n    {%- endif -%}\n{%- endfor -%}\n{{bos_token}}{%- if not ns.found -%}\n{{'You "
     "are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you "
     "only answer questions related to computer science. For politically sensitive questions, security and privacy "
     "issues, and other non-computer science questions, you will refuse to answer\\n'}}\n{%- endif %}\n{%- for "
     "message in messages %}\n    {%- if message['role'] == 'system' %}\n{{ message['content'] }}\n    {%- else %}\n "
     "       {%- if message['role'] == 'user' %}\n{{'### Instruction:\\n' + message['content'] + '\\n'}}\n        {%- "
     "else %}\n{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}\n        {%- endif %}\n    {%- endif "
     "%}\n{%- endfor %}\n{% if add_generation_prompt %}\n{{'### Response:'}}\n{% endif %}",
     NM_CHAT_TEMPLATE_DEEPSEEK,
     "You are a helpful assistant### Instruction:\nHello\n### Response:\nHi there\n<|EOT|>\n### Instruction:\nWho "
     "are you\n### Response:\n   I am an assistant   \n<|EOT|>\n### Instruction:\nAnother question\n### Response:\n"},
    {"eachadea/vicuna-13b-1.1",
     "{%- for message in messages %}{%- if message['role'] == 'system' -%}{{- '' + message['content'] + '\n\n' "
     "-}}{%- else -%}{%- if message['role'] == 'user' -%}{{-'USER: ' + message['content'] + '\n'-}}{%- else "
     "-%}{{-'ASSISTANT: ' + message['content'] + '</s>\n' -}}{%- endif -%}{%- endif -%}{%- endfor -%}{%- if "
     "add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}",
     NM_CHAT_TEMPLATE_VICUNA,
     "You are a helpful assistant\n\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\nASSISTANT:    I am an "
     "assistant   </s>\nUSER: Another question\nASSISTANT:"},
    {"Orca-Vicuna",
     "{%- for message in messages %}{%- if message['role'] == 'system' -%}{{-'SYSTEM: ' + message['content'] + '\n' "
     "-}}{%- else -%}{%- if message['role'] == 'user' -%}{{-'USER: ' + message['content'] + '\n'-}}{%- else "
     "-%}{{-'ASSISTANT: ' + message['content'] + '</s>\n' -}}{%- endif -%}{%- endif -%}{%- endfor -%}{%- if "
     "add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}",
     NM_CHAT_TEMPLATE_VICUNA_ORCA,
     "SYSTEM: You are a helpful assistant\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\nASSISTANT:    I "
     "am an assistant   </s>\nUSER: Another question\nASSISTANT:"},
    {"CohereForAI/c4ai-command-r-plus",
     "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
     "system_message = messages[0]['content'] %}{% elif false == true %}{% set loop_messages = messages %}{% set "
     "system_message = 'You are Command-R, a brilliant, sophisticated, AI-assistant trained to assist human users by "
     "providing thorough responses. You are trained by Cohere.' %}{% else %}{% set loop_messages = messages %}{% set "
     "system_message = false %}{% endif %}{% if system_message != false %}{{ "
     "'<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message + '<|END_OF_TURN_TOKEN|>' }}{% endif %}{% for "
     "message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
     "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% set "
     "content = message['content'] %}{% if message['role'] == 'user' %}{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + "
     "content.strip() + '<|END_OF_TURN_TOKEN|>' }}{% elif message['role'] == 'assistant' %}{{ "
     "'<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}{% endif %}{% endfor "
     "%}{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}",
     NM_CHAT_TEMPLATE_COMMAND_R,
     "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful "
     "assistant<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello<|END_OF_TURN_TOKEN|><|START_OF_TURN_"
     "TOKEN|><|CHATBOT_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Who are "
     "you<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>I am an "
     "assistant<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Another "
     "question<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"},
    {"Llama-3",
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
     "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
     "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ "
     "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}",
     NM_CHAT_TEMPLATE_LLAMA3,
     "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
     "assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|"
     "end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are "
     "you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an "
     "assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother "
     "question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
    {"Phi-3-mini",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + "
     "message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') "
     "%}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}",
     NM_CHAT_TEMPLATE_PHI3,
     "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi "
     "there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   "
     "<|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n"},
    {"Phi-3-small",
     "{{ bos_token }}{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + "
     "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% "
     "endif %}",
     NM_CHAT_TEMPLATE_PHI3,
     "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi "
     "there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   "
     "<|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n"},
    {"ChatGLM3",
     "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n {{ message['content'] "
     "}}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}{% endfor %}{% if "
     "add_generation_prompt %}<|assistant|>{% endif %}",
     NM_CHAT_TEMPLATE_CHATGLM3,
     "[gMASK]sop<|system|>\n You are a helpful assistant<|user|>\n Hello<|assistant|>\n Hi there<|user|>\n Who are "
     "you<|assistant|>\n    I am an assistant   <|user|>\n Another question<|assistant|>"},
    {"ChatGLM4 (excerpt)",
     "[gMASK]<sop>{% for item in messages %}{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ "
     "item['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
     NM_CHAT_TEMPLATE_CHATGLM4,
     "[gMASK]<sop><|system|>\nYou are a helpful assistant<|user|>\nHello<|assistant|>\nHi there<|user|>\nWho are "
     "you<|assistant|>\n   I am an assistant   <|user|>\nAnother question<|assistant|>\n"},
    {"GLMEdge",
     "{% for item in messages %}{% if item['role'] == 'system' %}<|system|>\n{{ item['content'] }}{% elif "
     "item['role'] == 'user' %}<|user|>\n{{ item['content'] }}{% elif item['role'] == 'assistant' %}<|assistant|>\n{{ "
     "item['content'] }}{% endif %}{% endfor %}<|assistant|>",
     NM_CHAT_TEMPLATE_GLMEDGE,
     "<|system|>\nYou are a helpful assistant<|user|>\nHello<|assistant|>\nHi there<|user|>\nWho are "
     "you<|assistant|>\n   I am an assistant   <|user|>\nAnother question<|assistant|>"},
    {"MiniCPM-3B-OpenHermes-2.5-v2-GGUF",
     "{% for message in messages %}{% if message['role'] == 'user' %}{{'<用户>' + message['content'].strip() + "
     "'<AI>'}}{% else %}{{message['content'].strip()}}{% endif %}{% endfor %}",
     NM_CHAT_TEMPLATE_MINICPM,
     "You are a helpful assistant<用户>Hello<AI>Hi there<用户>Who are you<AI>I am an assistant<用户>Another "
     "question<AI>"},
    {"DeepSeek-V2",
     "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% "
     "for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif "
     "message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == "
     "'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ "
     "'Assistant:' }}{% endif %}",
     NM_CHAT_TEMPLATE_DEEPSEEK2,
     "You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>User: Who are "
     "you\n\nAssistant:    I am an assistant   <｜end▁of▁sentence｜>User: Another question\n\nAssistant:"},
    {"ibm-granite/granite-3.0-8b-instruct (excerpt)",
     "{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n    {{- "
     "'<|start_of_role|>system<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}\n    {%- elif "
     "message['role'] == 'user' %}\n    {{- '<|start_of_role|>user<|end_of_role|>' + message['content'] + "
     "'<|end_of_text|>\n' }}\n    {%- elif message['role'] == 'assistant' %}\n    {{- "
     "'<|start_of_role|>assistant<|end_of_role|>'  + message['content'] + '<|end_of_text|>\n' }}\n    {%- endif %}\n  "
     "  {%- if loop.last and add_generation_prompt %}\n    {{- '<|start_of_role|>assistant<|end_of_role|>' }}\n    "
     "{%- endif %}\n{%- endfor %}",
     NM_CHAT_TEMPLATE_GRANITE,
     "<|start_of_role|>system<|end_of_role|>You are a helpful "
     "assistant<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Hello<|end_of_text|>\n<|start_of_role|>"
     "assistant<|end_of_role|>Hi there<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Who are "
     "you<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>   I am an assistant   "
     "<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Another "
     "question<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"},
    {"mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)",
     "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set "
     "loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- "
     "bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == "
     "0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate "
     "user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- "
     "if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + "
     "message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' "
     "[/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + "
     "message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles "
     "are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor "
     "%}\n",
     NM_CHAT_TEMPLATE_MISTRAL_V1,
     " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an "
     "assistant   </s> [INST] Another question [/INST]"},
    {"Mistral-Large-Instruct-2407 (mistralai 'v3' template, excerpt)",
     "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- "
     "if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS] [\" }}\n      "
     "      {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif %}\n        {%- if loop.last and system_message is "
     "defined %}\n            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n "
     "       {%- else %}\n            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n  "
     "  {%- elif message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + eos_token}}\n "
     "   {%- endif %}\n{%- endfor %}\n",
     NM_CHAT_TEMPLATE_MISTRAL_V3,
     "[INST] You are a helpful assistant\n\nHello[/INST] Hi there</s>[INST] Who are you[/INST] I am an "
     "assistant</s>[INST] Another question[/INST]"},
    {"Mistral-Nemo-Instruct-2407 (mistralai 'v3-tekken' template, excerpt)",
     "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- "
     "if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS][\" }}\n       "
     "     {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif %}\n        {%- if loop.last and system_message is "
     "defined %}\n            {{- \"[INST]\" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n  "
     "      {%- else %}\n            {{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n  "
     "  {%- elif message[\"role\"] == \"assistant\" %}\n        {{- message[\"content\"] + eos_token}}\n    {%- endif "
     "%}\n{%- endfor %}\n",
     NM_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN,
     "[INST]You are a helpful assistant\n\nHello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   "
     "</s>[INST]Another question[/INST]"},
    {"mistralai/Mistral-Large-Instruct-2411 (mistralai 'v7' template)",
     "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
     "message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + "
     "message['content'] + '[/SYSTEM_PROMPT]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] "
     "+ eos_token }}{% else %}{{ raise_exception('Only user, system and assistant roles are supported!') }}{% endif "
     "%}{% endfor %}",
     NM_CHAT_TEMPLATE_MISTRAL_V7,
     "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who are "
     "you[/INST]    I am an assistant   </s>[INST] Another question[/INST]"},
    {"Infinigence/Megrez-3B-Instruct",
     "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
     "'<|role_start|>system<|role_end|>你是Megrez-3B-Instruct，将针对用户的问题给出详细的、积极的回答。<|turn_end|>"
     "' }}{% endif %}{{ '<|role_start|>' + message['role'] + '<|role_end|>' + message['content'] + '<|turn_end|>' "
     "}}{% endfor %}{% if add_generation_prompt %}{{ '<|role_start|>assistant<|role_end|>' }}{% endif %}",
     NM_CHAT_TEMPLATE_MEGREZ,
     "<|role_start|>system<|role_end|>You are a helpful "
     "assistant<|turn_end|><|role_start|>user<|role_end|>Hello<|turn_end|><|role_start|>assistant<|role_end|>Hi "
     "there<|turn_end|><|role_start|>user<|role_end|>Who are "
     "you<|turn_end|><|role_start|>assistant<|role_end|>   I am an assistant   "
     "<|turn_end|><|role_start|>user<|role_end|>Another question<|turn_end|><|role_start|>assistant<|role_end|>"},
    {"phi-4",
     "{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + "
     "message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + "
     "message['content'] + '<|im_end|><|im_start|>assistant<|im_sep|>'}}{% elif (message['role'] == 'assistant') "
     "%}{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}",
     NM_CHAT_TEMPLATE_PHI4,
     "<|im_start|>system<|im_sep|>You are a helpful "
     "assistant<|im_end|><|im_start|>user<|im_sep|>Hello<|im_end|><|im_start|>assistant<|im_sep|>Hi "
     "there<|im_end|><|im_start|>user<|im_sep|>Who are you<|im_end|><|im_start|>assistant<|im_sep|>   I am an "
     "assistant   <|im_end|><|im_start|>user<|im_sep|>Another question<|im_end|><|im_start|>assistant<|im_sep|>"},
    {"inclusionAI/Ling-lite",
     "{% for message in messages %}{% set role = message['role'] | lower %}{% if role == 'user' %}{% set role = "
     "'HUMAN' %}{% endif %}{% set role = role | upper %}{{ '<role>' + role + '</role>' + message['content'] }}{% "
     "endfor %}{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}",
     NM_CHAT_TEMPLATE_BAILING,
     "<role>SYSTEM</role>You are a helpful assistant<role>HUMAN</role>Hello<role>ASSISTANT</role>Hi "
     "there<role>HUMAN</role>Who are you<role>ASSISTANT</role>   I am an assistant   <role>HUMAN</role>Another "
     "question<role>ASSISTANT</role>"},
};
#define N_UPSTREAM (sizeof UPSTREAM / sizeof UPSTREAM[0])

/* Formats llama.cpp's test has no case for: chosen by name here, expected
 * bytes written from llama-chat.cpp's code for each. */
typedef struct ncase {
    const char *name;
    const char *expected;
} ncase;

static const ncase BY_NAME[] = {
    {"llama2-sys",
     "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   "
     "I am an assistant   </s>[INST] Another question [/INST]"},
    {"zephyr",
     "<|system|>\nYou are a helpful assistant<|endoftext|>\n<|user|>\nHello<|endoftext|>\n<|assistant|>\nHi "
     "there<|endoftext|>\n<|user|>\nWho are you<|endoftext|>\n<|assistant|>\n   I am an assistant   "
     "<|endoftext|>\n<|user|>\nAnother question<|endoftext|>\n<|assistant|>\n"},
    {"tinyllama",
     "<|system|>\nYou are a helpful assistant</s>\n<|user|>\nHello</s>\n<|assistant|>\nHi there</s>\n<|user|>\nWho "
     "are you</s>\n<|assistant|>\n   I am an assistant   </s>\n<|user|>\nAnother question</s>\n<|assistant|>\n"},
    {"falcon3",
     "<|system|>\nYou are a helpful assistant\n<|user|>\nHello\n<|assistant|>\nHi there\n<|user|>\nWho are "
     "you\n<|assistant|>\n   I am an assistant   \n<|user|>\nAnother question\n<|assistant|>\n"},
    {"llama4",
     "<|header_start|>system<|header_end|>\n\nYou are a helpful "
     "assistant<|eot|><|header_start|>user<|header_end|>\n\nHello<|eot|><|header_start|>assistant<|header_end|>\n\nHi "
     "there<|eot|><|header_start|>user<|header_end|>\n\nWho are you<|eot|><|header_start|>assistant<|header_end|>\n\nI "
     "am an assistant<|eot|><|header_start|>user<|header_end|>\n\nAnother "
     "question<|eot|><|header_start|>assistant<|header_end|>\n\n"},
    {"deepseek3",
     "You are a helpful assistant\n\n<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜><｜User｜>Who are "
     "you<｜Assistant｜>   I am an assistant   <｜end▁of▁sentence｜><｜User｜>Another question<｜Assistant｜>"},
    {"exaone3",
     "[|system|]You are a helpful assistant[|endofturn|]\n[|user|]Hello\n[|assistant|]Hi there[|endofturn|]\n[|user|]"
     "Who are you\n[|assistant|]I am an assistant[|endofturn|]\n[|user|]Another question\n[|assistant|]"},
    {"mistral-v7-tekken",
     "[SYSTEM_PROMPT]You are a helpful assistant[/SYSTEM_PROMPT][INST]Hello[/INST]Hi there</s>[INST]Who are "
     "you[/INST]   I am an assistant   </s>[INST]Another question[/INST]"},
    /* aliases */
    {"llama-3",
     "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
     "assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|"
     "end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are "
     "you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an "
     "assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother "
     "question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
    {"mistral",
     " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an "
     "assistant   </s> [INST] Another question [/INST]"},
};
#define N_BY_NAME (sizeof BY_NAME / sizeof BY_NAME[0])

/* Shows where two renderings part, with control characters escaped. */
static void show_diff(const char *got, const char *want, char *out, size_t cap) {
    size_t i = 0;
    while (got[i] && got[i] == want[i]) i++;
    size_t from = i > 20 ? i - 20 : 0;
    char g[64], w[64];
    size_t gi = 0, wi = 0;
    for (size_t k = from; got[k] && gi < 40; k++) g[gi++] = got[k] == '\n' ? '|' : got[k];
    for (size_t k = from; want[k] && wi < 40; k++) w[wi++] = want[k] == '\n' ? '|' : want[k];
    g[gi] = w[wi] = 0;
    snprintf(out, cap, "differ at byte %zu: got \"%s\" want \"%s\" (newlines shown as |)", i, g, w);
}

static void check_render(nm_test *t, const char *name, nm_chat_template tm, const char *want) {
    nm_err err = {0};
    char *out = NULL;
    nm_status st = nm_chat_render(tm, CONV, N_CONV, true, &out, &err);
    if (!CHECK_OK(t, st, err)) return;
    if (strcmp(out, want) != 0) {
        char d[300];
        show_diff(out, want, d, sizeof d);
        CHECKF(t, false, "%s: %s", name, d);
    }
    free(out);
}

static void test_upstream_cases(nm_test *t) {
    for (size_t i = 0; i < N_UPSTREAM; i++) {
        const tcase *c = &UPSTREAM[i];
        nm_chat_template got = nm_chat_template_detect(c->tmpl);
        CHECKF(t, got == c->want, "%s: detected %s, want %s", c->name, nm_chat_template_name(got) ? nm_chat_template_name(got) : "unknown",
               nm_chat_template_name(c->want));
        check_render(t, c->name, c->want, c->expected);
    }
}

static void test_by_name(nm_test *t) {
    for (size_t i = 0; i < N_BY_NAME; i++) {
        nm_chat_template tm = nm_chat_template_from_name(BY_NAME[i].name);
        if (!CHECKF(t, tm != NM_CHAT_TEMPLATE_UNKNOWN, "name %s unknown", BY_NAME[i].name)) continue;
        check_render(t, BY_NAME[i].name, tm, BY_NAME[i].expected);
    }
    /* every id has a name that maps back to it */
    for (int id = 1; id < NM_CHAT_TEMPLATE_COUNT; id++) {
        const char *nm = nm_chat_template_name((nm_chat_template)id);
        if (!CHECKF(t, nm != NULL, "template %d has no name", id)) continue;
        CHECKF(t, nm_chat_template_from_name(nm) == (nm_chat_template)id, "%s does not map back", nm);
        /* a name passed as the "Jinja" text is taken as that name */
        CHECKF(t, nm_chat_template_detect(nm) == (nm_chat_template)id, "detect(\"%s\")", nm);
    }
    CHECK(t, nm_chat_template_name(NM_CHAT_TEMPLATE_UNKNOWN) == NULL);
    CHECK(t, nm_chat_template_name(NM_CHAT_TEMPLATE_COUNT) == NULL);
    CHECK(t, nm_chat_template_from_name("llama-2") == NM_CHAT_TEMPLATE_LLAMA2);
    CHECK(t, nm_chat_template_from_name("phi-3") == NM_CHAT_TEMPLATE_PHI3);
    CHECK(t, nm_chat_template_from_name("chatml ") == NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, nm_chat_template_from_name("ChatML") == NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, nm_chat_template_from_name(NULL) == NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, NM_CHAT_TEMPLATE_DEFAULT == NM_CHAT_TEMPLATE_CHATML);
}

/* Real templates as shipped in tokenizer_config.json / GGUF files. */
static void test_detect_real_templates(nm_test *t) {
    /* meta-llama/Llama-2-7b-chat-hf */
    const char *llama2_chat =
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
        "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
        "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
        "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
        "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
        "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
        "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
        "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
    CHECK(t, nm_chat_template_detect(llama2_chat) == NM_CHAT_TEMPLATE_LLAMA2_SYS_STRIP);
    /* TinyLlama/TinyLlama-1.1B-Chat-v1.0 (the zephyr format with eos_token) */
    const char *tinyllama =
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
        "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token "
        "}}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% "
        "endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
    CHECK(t, nm_chat_template_detect(tinyllama) == NM_CHAT_TEMPLATE_TINYLLAMA);
    /* Qwen2-style chatml with a default system prompt */
    const char *qwen =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
        "'<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
        "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt "
        "%}{{ '<|im_start|>assistant\n' }}{% endif %}";
    CHECK(t, nm_chat_template_detect(qwen) == NM_CHAT_TEMPLATE_CHATML);
    /* Meta-Llama-3-8B-Instruct */
    const char *llama3 =
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' "
        "%}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if "
        "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    CHECK(t, nm_chat_template_detect(llama3) == NM_CHAT_TEMPLATE_LLAMA3);
    /* gemma-2 */
    const char *gemma2 =
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% "
        "endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% "
        "else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | "
        "trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
    CHECK(t, nm_chat_template_detect(gemma2) == NM_CHAT_TEMPLATE_GEMMA);
    /* a template name that starts with "mistral" takes llama.cpp's [INST] branch */
    CHECK(t, nm_chat_template_detect("mistral-foo") == NM_CHAT_TEMPLATE_LLAMA2);
    /* not recognised */
    CHECK(t, nm_chat_template_detect("INVALID TEMPLATE") == NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, nm_chat_template_detect("") == NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, nm_chat_template_detect(NULL) == NM_CHAT_TEMPLATE_UNKNOWN);
    /* SmolVLM uses <|im_start|> but is not chatml; EXAONE 4 is not EXAONE 3 */
    CHECK(t, nm_chat_template_detect("<|im_start|>{{ 'User: ' }}<end_of_utterance>") == NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, nm_chat_template_detect("[|system|][|assistant|][|endofturn|][|tool|]") == NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, nm_chat_template_detect("[|system|][|assistant|][|endofturn|]") == NM_CHAT_TEMPLATE_EXAONE3);
}

/* A GGUF holding just a chat template and a vocabulary. */
static const char *write_vocab_gguf(nm_test *t, const char *name, const char *tmpl, const char *eos_text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", nm_test_tmpdir(), name);
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    const char *toks[] = {"<unk>", "<s>", eos_text};
    nm_gguf_writer_set_str(w, "general.architecture", "llama");
    nm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 3);
    nm_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (tmpl) nm_gguf_writer_set_str(w, "tokenizer.chat_template", tmpl);
    nm_err err = {0};
    nm_status st = nm_gguf_writer_write(w, path, &err);
    nm_gguf_writer_free(w);
    CHECK_OK(t, st, err);
    return path;
}

static nm_chat_template tmpl_of_file(nm_test *t, const char *path) {
    nm_err err = {0};
    nm_gguf *g = NULL;
    nm_status st = nm_gguf_open(path, &g, &err);
    if (!CHECK_OK(t, st, err)) return NM_CHAT_TEMPLATE_COUNT;
    nm_chat_template tm = nm_chat_template_of_gguf(g);
    nm_gguf_free(g);
    return tm;
}

static void test_of_gguf(nm_test *t) {
    /* stories260K has no template: the documented default */
    const char *stories = nm_test_shared("models/stories260K.gguf");
    nm_err err = {0};
    nm_gguf *g = NULL;
    if (CHECK_OK(t, nm_gguf_open(stories, &g, &err), err)) {
        CHECK(t, nm_gguf_find_key(g, "tokenizer.chat_template") < 0);
        CHECK(t, nm_chat_template_of_gguf(g) == NM_CHAT_TEMPLATE_DEFAULT);
        nm_gguf_free(g);
    }
    const char *zephyr_like =
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + "
        "eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token "
        "}}{% endif %}{% endfor %}";
    /* the zephyr format with eos_token: the EOS text decides which ending */
    CHECK(t, tmpl_of_file(t, write_vocab_gguf(t, "a.gguf", zephyr_like, "</s>")) == NM_CHAT_TEMPLATE_TINYLLAMA);
    CHECK(t, tmpl_of_file(t, write_vocab_gguf(t, "b.gguf", zephyr_like, "<|endoftext|>")) == NM_CHAT_TEMPLATE_ZEPHYR);
    CHECK(t, tmpl_of_file(t, write_vocab_gguf(t, "c.gguf", "{{ nothing we know }}", "</s>")) ==
                 NM_CHAT_TEMPLATE_UNKNOWN);
    CHECK(t, tmpl_of_file(t, write_vocab_gguf(t, "d.gguf", NULL, "</s>")) == NM_CHAT_TEMPLATE_DEFAULT);
}

/* What the chat tool relies on to decode only the new turn: the prompt of a
 * conversation (no assistant prefix) is a prefix of the prompt with one more
 * user message (with the prefix), for formats that do not reshape earlier
 * turns. */
static void test_incremental_prefix(nm_test *t) {
    nm_chat_template ts[] = {NM_CHAT_TEMPLATE_CHATML, NM_CHAT_TEMPLATE_LLAMA3, NM_CHAT_TEMPLATE_PHI3,
                             NM_CHAT_TEMPLATE_ZEPHYR, NM_CHAT_TEMPLATE_LLAMA2_SYS, NM_CHAT_TEMPLATE_GEMMA,
                             NM_CHAT_TEMPLATE_MISTRAL_V7};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        nm_err err = {0};
        char *a = NULL, *b = NULL;
        CHECK_OK(t, nm_chat_render(ts[i], CONV, 5, false, &a, &err), err);
        CHECK_OK(t, nm_chat_render(ts[i], CONV, 6, true, &b, &err), err);
        if (a && b)
            CHECKF(t, strncmp(a, b, strlen(a)) == 0, "%s: history is not a prefix", nm_chat_template_name(ts[i]));
        free(a);
        free(b);
    }
    /* without the prefix, chatml ends after the last message */
    char *out = NULL;
    nm_err err = {0};
    CHECK_OK(t, nm_chat_render(NM_CHAT_TEMPLATE_CHATML, CONV + 1, 1, false, &out, &err), err);
    CHECK(t, out && strcmp(out, "<|im_start|>user\nHello<|im_end|>\n") == 0);
    free(out);
    /* an empty conversation is just the assistant prefix */
    CHECK_OK(t, nm_chat_render(NM_CHAT_TEMPLATE_CHATML, NULL, 0, true, &out, &err), err);
    CHECK(t, out && strcmp(out, "<|im_start|>assistant\n") == 0);
    free(out);
}

static void test_bad_input(nm_test *t) {
    nm_err err = {0};
    char *out = (char *)1;
    CHECK(t, nm_chat_render(NM_CHAT_TEMPLATE_UNKNOWN, CONV, N_CONV, true, &out, &err) == NM_ERR_ARG && !out);
    CHECK(t, nm_chat_render((nm_chat_template)999, CONV, N_CONV, true, &out, &err) == NM_ERR_ARG);
    nm_chat_msg bad[] = {{"user", NULL}};
    CHECK(t, nm_chat_render(NM_CHAT_TEMPLATE_CHATML, bad, 1, true, &out, &err) == NM_ERR_ARG);
    CHECKF(t, strstr(err.msg, "content") != NULL, "message: %s", err.msg);
    nm_chat_msg bad2[] = {{NULL, "x"}};
    CHECK(t, nm_chat_render(NM_CHAT_TEMPLATE_CHATML, bad2, 1, true, &out, &err) == NM_ERR_ARG);
    CHECK(t, nm_chat_render(NM_CHAT_TEMPLATE_CHATML, NULL, 2, true, &out, &err) == NM_ERR_ARG);
    /* an empty role does not trip the capitalising formats */
    nm_chat_msg empty[] = {{"", "x"}};
    CHECK_OK(t, nm_chat_render(NM_CHAT_TEMPLATE_OPENCHAT, empty, 1, true, &out, &err), err);
    CHECK(t, out && strcmp(out, "GPT4 Correct : x<|end_of_turn|>GPT4 Correct Assistant:") == 0);
    free(out);
}

int main(void) {
    nm_test_run("upstream_cases", test_upstream_cases);
    nm_test_run("by_name", test_by_name);
    nm_test_run("detect_real_templates", test_detect_real_templates);
    nm_test_run("of_gguf", test_of_gguf);
    nm_test_run("incremental_prefix", test_incremental_prefix);
    nm_test_run("bad_input", test_bad_input);
    return nm_test_finish();
}
