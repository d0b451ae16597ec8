"""简体中文 (Simplified Chinese): the notebook front end's texts.

* ``MESSAGES``: every key of ``kit/i18n/en.py``, translated (same ``{fields}``).
* ``LABELS``: the short label of every config field.
* ``HELP``: every config field's help text as ``(english, chinese)``: the English is kit.config's
  text that was translated (the test suite fails when kit.config's text changes, so the Chinese is
  updated with it); "Used by" is appended from ``field.used_by``.

Terms: token 词元, checkpoint 检查点, adapter 适配器, base model 基座模型, run 训练 / 运行,
run dir 运行目录, stage 训练阶段, rollout 不译, dtype 数据类型 / 精度.
"""

MESSAGES = {
    "board.header": "<b>Forge Kit</b> &middot; 在各标签页中设置好训练，然后点击“开始”",
    "board.header_magic": "<b>Forge Kit</b> &middot; 下面的单元格可以重现这次训练：把它复制到一个新的单元格中",
    "board.language": "界面语言",
    "board.show_yaml": "显示 YAML",
    "board.copy_magic": "复制为 %%forge_train",
    "board.all_defaults": "全部为默认值",
    "board.invalid_settings": "设置无效：{error}",
    "tab.model": "模型",
    "tab.quant": "量化",
    "tab.adapter": "适配器",
    "tab.stage": "训练阶段",
    "tab.data": "数据",
    "tab.train": "训练",
    "tab.chat": "对话",
    "tab.export": "导出",
    "tab.evaluate": "评估",
    "tab.yaml": "YAML",
    "error.bug": "{error}（这是 forge-kit 的缺陷，请向我们报告）",
    "error.bug_saved": "运行目录：{run_dir}；错误堆栈已保存到 {path}。",
    "field.none": "无",
    "field.used_by": "适用阶段：{stages}。",
    "model.name_placeholder": "注册名、Hub 模型 ID、目录或 .gguf 文件",
    "model.info": "{model} &middot; 设备 <b>{device}</b> &middot; 精度 <b>{dtype}</b>",
    "model.info_registered": "{family}，{params} 参数，{source}",
    "model.info_custom": "自定义模型（Hub 模型 ID、目录或 .gguf 文件）",
    "model.source_embedded": "内置",
    "model.source_hub": "来自 Hub",
    "quant.needs_bitsandbytes": "<small>量化需要 <code>bitsandbytes</code>（pip install bitsandbytes）</small>",
    "adapter.estimate": "可训练参数 <b>{trainable}</b>，共 {total}（{pct}%）&middot; 训练约需 "
                        "{memory}（权重 {weights}，激活 {activations}）",
    "adapter.estimate_na": "可训练参数：暂无（{reason}）",
    "adapter.estimate_not_on_disk": "模型还不在本地磁盘上，首次加载后会显示估算",
    "data.dataset_placeholder": "已注册的数据集名或文件路径（json/jsonl/csv/parquet）",
    "data.preview": "预览",
    "train.hyperparameters": "超参数",
    "train.start": "开始",
    "train.start_tooltip": "用当前设置在后台开始一次新的训练。",
    "train.stop": "停止",
    "train.stop_tooltip": "在当前这一步结束后停止，并保存检查点。",
    "train.resume": "继续",
    "train.resume_tooltip": "从最后一个完整的检查点继续训练（可以调大最大步数）。",
    "train.progress": "进度",
    "train.status_idle": "状态：空闲",
    "train.status_value": "状态：{status}",
    "train.status_training": "状态：训练中",
    "train.status_stopping": "状态：正在停止（这一步结束后保存检查点）&hellip;",
    "train.status_resuming": "状态：从 {path} 继续",
    "train.status_finished": "状态：已完成，共 {step} 步",
    "train.status_stopped": "状态：已在第 {step} 步停止",
    "train.status_failed": "状态：失败 &middot; {error}",
    "train.status_error": "状态：出错 &middot; {error}",
    "train.at_checkpoint": " &middot; 检查点 {name}",
    "train.already_running": "已有一次训练正在进行，请先停止它",
    "train.nothing_to_resume": "没有可以继续的训练：请先开始一次训练",
    "train.eta": "预计剩余 {eta}",
    "train.loss": "损失 {loss}",
    "train.tokens_per_s": "{tps} 词元/秒",
    "train.memory": "{mb} MB",
    "train.model_info": "可训练参数 {trainable}，共 {total}（{pct}%），运行于 {device} / {dtype}",
    "train.checkpoint_saved": "已保存检查点：{path}",
    "run.status_loading_model": "正在加载模型",
    "run.status_preparing_data": "正在准备数据",
    "run.status_training": "训练中",
    "plot.loss": "损失",
    "plot.loss_smoothed": "损失（平滑）",
    "plot.eval_loss": "评估损失",
    "plot.learning_rate": "学习率",
    "plot.step": "步数",
    "plot.waiting": "等待第一步…",
    "chat.system": "系统提示",
    "chat.system_placeholder": "可选的系统提示词",
    "chat.temperature": "温度",
    "chat.temperature_tooltip": "0：贪心解码（结果确定）。",
    "chat.max_tokens": "最大词元数",
    "chat.compare": "与基座模型对比",
    "chat.compare_tooltip": "同时用微调前的模型回答（即去掉适配器的这次训练）。",
    "chat.input_placeholder": "输入消息，然后点击“发送”",
    "chat.send": "发送",
    "chat.clear": "清空",
    "chat.side_tuned": "微调后",
    "chat.side_base": "基座",
    "chat.model_of": "{side}模型",
    "chat.loading": "正在加载{side}模型&hellip;",
    "chat.answering": "{side}模型正在回答&hellip;",
    "chat.busy": "仍在回答上一条消息&hellip;",
    "chat.base_needs_run": "与基座模型对比需要一次训练（或一个设置了 model.adapter_path 的配置）",
    "chat.you": "你",
    "chat.model": "模型",
    "chat.empty": "还没有消息。",
    "export.out_dir": "输出目录",
    "export.out_dir_placeholder": "默认：<运行目录>/export",
    "export.merge": "把适配器合并进基座模型",
    "export.modelfile": "生成 Ollama Modelfile",
    "export.gguf": "GGUF",
    "export.no_gguf": "不生成 GGUF",
    "export.push_to_hub": "推送到 Hub",
    "export.push_to_hub_placeholder": "用户名/仓库名（可选）",
    "export.token": "Hub 令牌",
    "export.token_placeholder": "或使用 HF_TOKEN",
    "export.dry_run": "演练（只显示计划）",
    "export.export": "导出",
    "export.confirm": "确认导出",
    "export.cancel": "取消",
    "export.please_confirm": "请确认：",
    "export.why_merge": "合并会写出一份完整的模型权重副本",
    "export.why_gguf": "GGUF {kind} 转换比较慢",
    "export.why_push": "推送会把模型发布到 Hub 上的 {repo}（在这里无法撤销）",
    "export.nothing_trained": "还没有可以导出的内容：请先训练",
    "export.busy": "正在导出&hellip;",
    "export.done": "完成",
    "evaluate.dataset": "数据集",
    "evaluate.dataset_placeholder": "名称或文件（留空：使用配置中的评估数据集）",
    "evaluate.mode": "模式",
    "evaluate.mode_auto": "自动（根据数据行判断）",
    "evaluate.mode_predict": "生成：BLEU / ROUGE",
    "evaluate.mode_mc": "多项选择：准确率",
    "evaluate.metrics": "指标",
    "evaluate.metrics_placeholder": "例如 bleu, rouge（留空：默认指标）",
    "evaluate.max_rows": "最多行数",
    "evaluate.max_rows_tooltip": "只评估前 n 行（0：全部）",
    "evaluate.evaluate": "评估",
    "evaluate.compare_base": "与基座模型对比",
    "evaluate.compare_base_tooltip": "同时评估这次训练起点的模型，并排显示。",
    "evaluate.busy": "正在评估&hellip;",
    "evaluate.needs_extra": "BLEU / ROUGE 需要 eval 扩展：pip install \"forge-kit[eval]\"（多项选择准确率不需要它）。",
}

LABELS = {
    "model.name": "模型",
    "model.gguf_file": "GGUF 文件",
    "model.revision": "模型版本",
    "model.trust_remote_code": "信任远程代码",
    "model.allow_pickle": "允许 pickle 权重",
    "model.dtype": "权重精度",
    "model.device": "设备",
    "model.attn_implementation": "注意力实现",
    "model.template": "对话模板",
    "model.adapter_path": "适配器路径",
    "quant.bits": "量化位数",
    "quant.method": "量化方法",
    "quant.quant_type": "量化数据类型",
    "quant.double_quant": "双重量化",
    "quant.compute_dtype": "计算精度",
    "adapter.type": "微调方法",
    "adapter.lora_rank": "LoRA 秩",
    "adapter.lora_alpha": "LoRA 缩放系数",
    "adapter.lora_dropout": "LoRA 随机丢弃",
    "adapter.lora_target": "LoRA 作用模块",
    "adapter.modules_to_save": "全量训练模块",
    "adapter.use_dora": "使用 DoRA",
    "adapter.use_rslora": "使用 rsLoRA",
    "adapter.init": "LoRA 初始化",
    "adapter.loraplus_lr_ratio": "LoRA+ 学习率比",
    "adapter.freeze_trainable_layers": "可训练层数",
    "adapter.freeze_trainable_modules": "可训练模块",
    "adapter.freeze_extra_modules": "额外训练模块",
    "adapter.resume_adapter": "叠加于适配器",
    "data.dataset": "数据集",
    "data.eval_dataset": "评估数据集",
    "data.format": "数据格式",
    "data.cutoff_len": "截断长度",
    "data.max_samples": "最大样本数",
    "data.val_size": "验证集大小",
    "data.train_on_prompt": "训练提示词",
    "data.mask_history": "只训练最后回答",
    "data.packing": "序列打包",
    "data.padding_free": "无填充批次",
    "data.mix_strategy": "混合策略",
    "data.interleave_probs": "交错采样概率",
    "data.shuffle": "打乱顺序",
    "data.cache": "缓存分词结果",
    "data.dataset_dir": "LLaMA-Factory 数据目录",
    "data.subset": "子集",
    "data.split": "数据切分",
    "data.revision": "版本",
    "data.data_files": "数据文件",
    "data.streaming": "流式读取",
    "model.new_special_tokens": "新增特殊词元",
    "model.shift_attn": "S²-attn 移位注意力",
    "model.shift_attn_group": "S²-attn 分组大小",
    "model.rope_scaling": "RoPE 缩放",
    "adapter.oft_block_size": "OFT 块大小",
    "adapter.llama_pro_blocks": "LLaMA Pro 新增块数",
    "stage.ref_model_quantization_bit": "参考模型量化位数",
    "stage.reward_model_quantization_bit": "奖励模型量化位数",
    "train.neftune_noise_alpha": "NEFTune 噪声强度",
    "stage.name": "训练阶段",
    "stage.loss_type": "损失类型",
    "stage.beta": "beta 系数",
    "stage.ftx": "SFT 损失权重",
    "stage.label_smoothing": "标签平滑",
    "stage.simpo_gamma": "SimPO 奖励间隔",
    "stage.ref_model": "参考模型",
    "stage.kto_desirable_weight": "期望样本权重",
    "stage.kto_undesirable_weight": "非期望样本权重",
    "stage.reward_funcs": "奖励函数",
    "stage.reward_model": "奖励模型",
    "stage.num_generations": "每题生成数",
    "stage.max_new_tokens": "最大生成长度",
    "stage.temperature": "采样温度",
    "stage.ppo_epochs": "PPO 轮数",
    "stage.ppo_clip": "PPO 裁剪范围",
    "stage.vf_coef": "价值损失系数",
    "stage.gamma": "折扣因子",
    "stage.lam": "GAE 衰减系数",
    "stage.use_vllm": "使用 vLLM",
    "train.output_dir": "输出目录",
    "train.max_steps": "最大步数",
    "train.num_epochs": "训练轮数",
    "train.batch_size": "批大小",
    "train.grad_accum": "梯度累积",
    "train.micro_batch_size": "微批大小",
    "train.micro_batch_tokens": "微批词元数",
    "train.learning_rate": "学习率",
    "train.lr_scheduler": "学习率调度",
    "train.warmup_ratio": "预热比例",
    "train.weight_decay": "权重衰减",
    "train.max_grad_norm": "最大梯度范数",
    "train.optim": "优化器",
    "train.badam_switch_every": "BAdam 切换间隔",
    "train.badam_switch_mode": "BAdam 切换顺序",
    "train.pure_bf16": "纯 bf16 训练",
    "train.seed": "随机种子",
    "train.logging_steps": "日志间隔",
    "train.save_steps": "保存间隔",
    "train.save_total_limit": "检查点上限",
    "train.eval_steps": "评估间隔",
    "train.gradient_checkpointing": "梯度检查点",
    "train.num_threads": "CPU 线程数",
    "train.report_to": "实验记录",
    "train.distributed": "多进程方式",
    "train.distributed_config": "分布式配置",
    "train.resume": "断点续训",
    "train.on_nonfinite": "数值异常处理",
    "train.allow_code": "允许执行代码",
    "generate.backend": "推理后端",
    "generate.max_new_tokens": "最大生成长度",
    "generate.temperature": "温度",
    "generate.top_p": "Top-p 采样",
    "generate.top_k": "Top-k 采样",
    "generate.repetition_penalty": "重复惩罚",
    "generate.system": "系统提示词",
    "generate.stop": "停止词",
    "generate.seed": "采样种子",
}

HELP = {
    "model.name": (
        "Registered name, hub id, local directory or .gguf file.",
        "已注册的模型名、Hub 模型 ID、本地目录或 .gguf 文件。"),
    "model.gguf_file": (
        "GGUF file name inside `name` (a directory or repo), if loading from GGUF.",
        "从 GGUF 加载时，`name`（目录或仓库）中的 GGUF 文件名。"),
    "model.revision": (
        "Hub revision (branch, tag or commit).",
        "Hub 上的版本（分支、标签或提交）。"),
    "model.trust_remote_code": (
        "Run model code shipped with the checkpoint (a warning is logged). Off unless you trust it.",
        "运行检查点自带的模型代码（会记录一条警告）。除非你信任它，否则请保持关闭。"),
    "model.allow_pickle": (
        "Also load pickled .bin weights (model or adapter) where a folder has no safetensors. Unpickling can run "
        "code: only for files you trust.",
        "在文件夹中没有 safetensors 时，也加载 pickle 格式的 .bin 权重（模型或适配器）。反序列化 pickle 可能执行代码："
        "只用于你信任的文件。"),
    "model.dtype": (
        "Weights dtype. auto: bf16 on GPUs that support it, else fp32 (CPU).",
        "权重的数据类型。auto：在支持 bf16 的 GPU 上用 bf16，否则用 fp32（CPU）。"),
    "model.device": (
        "Where to put the model. auto: CUDA if present, else CPU.",
        "模型放在哪个设备上。auto：有 CUDA 就用 CUDA，否则用 CPU。"),
    "model.attn_implementation": (
        "Attention kernel. auto: flash_attention_2 when installed on GPU, else sdpa.",
        "注意力计算内核。auto：GPU 上装有 flash_attention_2 时用它，否则用 sdpa。"),
    "model.template": (
        "Override the tokenizer's chat template: a registered template name or a Jinja string.",
        "覆盖分词器自带的对话模板：填已注册的模板名，或一段 Jinja 模板字符串。"),
    "model.adapter_path": (
        "A trained adapter (run dir or adapter dir) applied on load (for chat, or stacking).",
        "加载时套用的已训练适配器（运行目录或适配器目录），用于对话或叠加训练。"),
    "quant.bits": (
        "None (no quantization), 4 or 8 bits with bitsandbytes.",
        "None（不量化），或用 bitsandbytes 做 4 位 / 8 位量化。"),
    "quant.method": (
        "Quantization library used for on-the-fly loading.",
        "加载时即时量化所用的库。"),
    "quant.quant_type": (
        "4-bit data type.",
        "4 位量化的数据类型。"),
    "quant.double_quant": (
        "Quantize the 4-bit quantization constants too (saves ~0.4 bit/param).",
        "把 4 位量化的量化常数也再量化一次（每个参数约省 0.4 位）。"),
    "quant.compute_dtype": (
        "dtype of the matmuls on dequantized weights. auto: the model dtype.",
        "反量化后做矩阵乘法时的数据类型。auto：与模型的数据类型相同。"),
    "adapter.type": (
        "Fine-tuning type (oft: orthogonal fine-tuning, peft OFT).",
        "微调方法。"),
    "adapter.lora_rank": (
        "LoRA rank r.",
        "LoRA 的秩 r。"),
    "adapter.lora_alpha": (
        "LoRA alpha. None: 2 x rank.",
        "LoRA 的缩放系数 alpha。None：取秩的 2 倍。"),
    "adapter.lora_dropout": (
        "Dropout on the LoRA input.",
        "LoRA 输入上的 dropout 比例。"),
    "adapter.lora_target": (
        "'all' linear layers except the output head, or module names (list or comma string).",
        "'all'：除输出头以外的所有线性层；或者填模块名（列表，或用逗号分隔的字符串）。"),
    "adapter.modules_to_save": (
        "Extra modules trained in full and saved with the adapter (e.g. lm_head).",
        "额外做全量训练、并随适配器一起保存的模块（例如 lm_head）。"),
    "adapter.use_dora": (
        "DoRA: weight-decomposed LoRA.",
        "DoRA：权重分解的 LoRA。"),
    "adapter.use_rslora": (
        "rsLoRA: scale by alpha/sqrt(r).",
        "rsLoRA：按 alpha/sqrt(r) 缩放。"),
    "adapter.init": (
        "LoRA initialisation.",
        "LoRA 的初始化方式。"),
    "adapter.loraplus_lr_ratio": (
        "LoRA+: learning rate of B = ratio x learning rate of A.",
        "LoRA+：B 矩阵的学习率 = 该比值 × A 矩阵的学习率。"),
    "adapter.freeze_trainable_layers": (
        "freeze: train the last n layers (negative: the first n).",
        "freeze：训练最后 n 层（为负数时训练最前面的 n 层）。"),
    "adapter.freeze_trainable_modules": (
        "freeze: which modules inside the trainable layers ('all' or names).",
        "freeze：可训练层里要训练哪些模块（'all' 或模块名）。"),
    "adapter.freeze_extra_modules": (
        "freeze: extra top-level modules to train (e.g. embed_tokens, lm_head).",
        "freeze：额外训练的顶层模块（例如 embed_tokens、lm_head）。"),
    "adapter.resume_adapter": (
        "Stack: start from this trained LoRA adapter (path) and train a new one on top.",
        "叠加训练：以这个已训练的 LoRA 适配器（路径）为起点，在它之上再训练一个新的适配器。"),
    "data.dataset": (
        "Registered dataset name(s), file path(s) (json/jsonl/csv/parquet), comma separated or a list.",
        "已注册的数据集名，或数据文件路径（json/jsonl/csv/parquet）；多个时用逗号分隔或写成列表。"),
    "data.eval_dataset": (
        "Dataset(s) used for evaluation.",
        "用于评估的数据集。"),
    "data.format": (
        "Row format. auto: detected from the columns.",
        "数据行的格式。auto：根据列名自动识别。"),
    "data.cutoff_len": (
        "Maximum tokens per example (longer ones are truncated).",
        "每个样本最多的词元数（超出部分会被截断）。"),
    "data.max_samples": (
        "Use at most this many rows per dataset.",
        "每个数据集最多使用这么多行。"),
    "data.val_size": (
        "Fraction (<1) or count (>=1) of rows held out for evaluation.",
        "留出来做评估的行：小于 1 表示比例，大于等于 1 表示行数。"),
    "data.train_on_prompt": (
        "Also train on prompt tokens (system/user turns).",
        "提示词部分（system / user 轮次）也参与训练。"),
    "data.mask_history": (
        "Train only on the last assistant answer.",
        "只在最后一条助手回答上训练。"),
    "data.packing": (
        "Pack several examples per row (attention kept inside each example), so a step holds "
        "batch_size rows of cutoff_len tokens. Off: a step is batch_size examples; padding-free "
        "batches waste no padding either way.",
        "把多个样本打包进一行（注意力仍限制在各自的样本内），这样每一步包含 batch_size 行、"
        "每行 cutoff_len 个词元。关闭时，每一步是 batch_size 个样本；无论开关与否，无填充批次都不会把算力浪费在填充上。"),
    "data.padding_free": (
        "Put a batch's examples back to back in one row (no padding, attention per example). "
        "Off, or with attn_implementation=eager: padded rows with a block mask.",
        "把一个批次的样本首尾相接放进一行（不做填充，注意力按样本隔开）。关闭时，或 attn_implementation=eager "
        "时：改用带块状注意力掩码的填充行。"),
    "data.mix_strategy": (
        "How several datasets are mixed.",
        "多个数据集的混合方式。"),
    "data.interleave_probs": (
        "Sampling probabilities for interleaving.",
        "交错混合时各个数据集的采样概率。"),
    "data.shuffle": (
        "Shuffle the rows (with the seed) before the validation split and packing. The training "
        "order always comes from the trainer's seeded sampler, new every epoch.",
        "在划分验证集和打包之前，（按随机种子）打乱数据行。训练顺序总是来自训练器带种子的采样器，每个 epoch 都不同。"),
    "data.cache": (
        "Cache tokenized data by a content hash of (data, tokenizer, template, options).",
        "按内容哈希（数据、分词器、模板、选项）缓存分词后的数据。"),
    "data.dataset_dir": (
        "A folder with a LLaMA-Factory dataset_info.json: its names become datasets here (file_name / "
        "hf_hub_url, alpaca / sharegpt / openai).",
        "包含 LLaMA-Factory dataset_info.json 的文件夹：其中的名称在这里成为数据集（file_name / hf_hub_url，"
        "alpaca / sharegpt / openai）。"),
    "data.subset": (
        'Hub datasets: the config (subset) name.',
        'Hub 数据集：配置（子集）名称。'),
    "data.split": (
        'Hub datasets and Hub-style folders: the split to read.',
        'Hub 数据集和 Hub 式文件夹：要读取的切分。'),
    "data.revision": (
        'Hub datasets: a branch, tag or commit.',
        'Hub 数据集：分支、标签或提交。'),
    "data.data_files": (
        "Hub datasets: the files to read (datasets' data_files).",
        'Hub 数据集：要读取的文件（datasets 的 data_files）。'),
    "data.streaming": (
        "Hub datasets: stream rather than download; reads max_samples rows, or the rows max_steps needs "
        "(max_steps x batch_size x grad_accum x processes).",
        'Hub 数据集：流式读取而不下载；读取 max_samples 行，或 max_steps 所需的行数（max_steps × batch_size × grad_accum × 进程数）。'),
    "model.new_special_tokens": (
        'Tokens to add to the vocabulary (embeddings resized; a LoRA/OFT run then also trains and saves embed_tokens and lm_head).',
        '加入词表的新词元（会调整嵌入层大小；LoRA/OFT 训练时还会训练并保存 embed_tokens 和 lm_head）。'),
    "model.shift_attn": (
        'LongLoRA S²-attn while training: attention within groups of shift_attn_group tokens, half the heads shifted by half a group (padding-free batches; chat keeps full attention).',
        '训练时使用 LongLoRA 的 S²-attn：在 shift_attn_group 个词元的组内计算注意力，一半注意力头移位半个组（用于无填充批次；对话时仍用完整注意力）。'),
    "model.shift_attn_group": (
        'S²-attn group size in tokens (0: cutoff_len / 4); must divide data.cutoff_len.',
        'S²-attn 的分组大小（词元数；0 表示 cutoff_len / 4），必须整除 data.cutoff_len。'),
    "model.rope_scaling": (
        "Stretch RoPE to train past the model's context: the factor is data.cutoff_len / the model's max_position_embeddings (nothing changes when cutoff_len fits). None: off.",
        '拉伸 RoPE，以超出模型原有上下文长度进行训练：缩放系数为 data.cutoff_len 除以模型的 max_position_embeddings（cutoff_len 不超过上下文时不做改变）。None：关闭。'),
    "adapter.oft_block_size": (
        "oft: size of the orthogonal blocks (must divide the targeted layers' input size).",
        'oft：正交块的大小（必须整除目标层的输入维度）。'),
    "adapter.llama_pro_blocks": (
        'LLaMA Pro: add this many decoder blocks (copies with zeroed output projections, spread evenly) and train only them (needs adapter.type=freeze). 0: off.',
        'LLaMA Pro：新增这么多个解码器块（输出投影置零的副本，均匀插入），只训练这些新块（需要 adapter.type=freeze）。0：关闭。'),
    "stage.reward_model_quantization_bit": (
        "Load stage.reward_model quantized to 4 or 8 bits (bitsandbytes) to save memory.",
        "用 bitsandbytes 把 stage.reward_model 量化为 4 位或 8 位加载，以节省内存。"),
    "stage.ref_model_quantization_bit": (
        'Load stage.ref_model quantized to 4 or 8 bits (bitsandbytes) to save memory.',
        '以 4 或 8 位（bitsandbytes）量化加载 stage.ref_model，以节省内存。'),
    "train.neftune_noise_alpha": (
        'NEFTune: uniform noise of this scale on the input embeddings while training (never at inference). None: off.',
        'NEFTune：训练时在输入嵌入上加入此强度的均匀噪声（推理时从不加入）。None：关闭。'),
    "stage.name": (
        "Training stage.",
        "训练阶段。"),
    "stage.loss_type": (
        "Preference loss (sigmoid = DPO; orpo/simpo are reference-free).",
        "偏好损失（sigmoid 即 DPO；orpo / simpo 不需要参考模型）。"),
    "stage.beta": (
        "Strength of the KL / preference term.",
        "KL 项 / 偏好项的强度。"),
    "stage.ftx": (
        "Weight of an added SFT loss on the chosen answer (orpo has its own).",
        "在被选回答上额外加一项 SFT 损失，这是它的权重（orpo 自带这一项）。"),
    "stage.label_smoothing": (
        "Label smoothing of the preference labels (conservative SimPO).",
        "偏好标签的平滑系数（保守版 SimPO）。"),
    "stage.simpo_gamma": (
        "Target reward margin.",
        "目标奖励间隔（margin）。"),
    "stage.ref_model": (
        "Reference model. None: the base model (adapter disabled).",
        "参考模型。None：使用基座模型（关闭适配器）。"),
    "stage.kto_desirable_weight": (
        "Weight of desirable examples.",
        "期望样本的权重。"),
    "stage.kto_undesirable_weight": (
        "Weight of undesirable examples.",
        "非期望样本的权重。"),
    "stage.reward_funcs": (
        "Reward functions: built-in names (exact_match, contains, format[:regex], length[:chars]), "
        "Python callables, or 'module:function' (needs train.allow_code).",
        "奖励函数：内置名称（exact_match、contains、format[:regex]、length[:chars]）、Python "
        "可调用对象，或 'module:function'（需要开启 train.allow_code）。"),
    "stage.reward_model": (
        "A trained reward model (rm stage run dir); ppo needs it or reward_funcs.",
        "已训练的奖励模型（rm 阶段的运行目录）；ppo 需要它或 reward_funcs 二者之一。"),
    "stage.num_generations": (
        "Completions sampled per prompt.",
        "每个提示词采样的回答数。"),
    "stage.max_new_tokens": (
        "Tokens generated per completion during rollouts.",
        "rollout 时每个回答生成的词元数。"),
    "stage.temperature": (
        "Sampling temperature during rollouts.",
        "rollout 时的采样温度。"),
    "stage.ppo_epochs": (
        "Optimisation epochs per rollout batch.",
        "每批 rollout 数据的优化轮数。"),
    "stage.ppo_clip": (
        "Clip range of the policy ratio.",
        "策略比率的裁剪范围。"),
    "stage.vf_coef": (
        "Value loss coefficient.",
        "价值损失的系数。"),
    "stage.gamma": (
        "Discount.",
        "折扣因子。"),
    "stage.lam": (
        "GAE lambda.",
        "GAE 的 lambda。"),
    "stage.use_vllm": (
        "Generate with vLLM (needs the vllm extra and a GPU).",
        "用 vLLM 生成（需要 vllm 扩展和 GPU）。"),
    "train.output_dir": (
        "Run directory. None: FORGE_HOME/runs/<timestamp>-<stage>.",
        "运行目录。None：FORGE_HOME/runs/<时间戳>-<阶段>。"),
    "train.max_steps": (
        "Stop after this many optimizer steps (-1: use num_epochs).",
        "优化器走完这么多步后停止（-1：按 num_epochs 决定）。"),
    "train.num_epochs": (
        "Epochs over the training data (when max_steps is -1).",
        "训练数据要过几遍（max_steps 为 -1 时生效）。"),
    "train.batch_size": (
        "Rows per device per step.",
        "每个设备每一步的行数。"),
    "train.grad_accum": (
        "Gradient accumulation steps.",
        "梯度累积的步数。"),
    "train.micro_batch_size": (
        "Rows per forward pass; the rest of batch_size is accumulated into the same optimizer "
        "step (same update, less activation memory). None: the whole batch (padding-free "
        "batches are then split by micro_batch_tokens), or 1 row for padded packed rows "
        "on CPU.",
        "每次前向传播的行数；batch_size 中其余的行累积到同一个优化器步里（更新结果相同，"
        "激活内存更少）。None：整个批次一次算完（此时无填充批次按 micro_batch_tokens 切分）"
        "，在 CPU 上对填充的打包行则每次 1 行。"),
    "train.micro_batch_tokens": (
        "Padding-free batches: at most this many tokens per forward pass, whole examples "
        "only (one longer example goes alone); accumulated into the same step. None: cutoff_len "
        "on CPU, no limit on GPUs.",
        "无填充批次：每次前向传播最多这么多词元，只放完整的样本（更长的单个样本单独算一次）"
        "；累积到同一步里。None：CPU 上为 cutoff_len，GPU 上不设上限。"),
    "train.learning_rate": (
        "Peak learning rate.",
        "峰值学习率。"),
    "train.lr_scheduler": (
        "Learning-rate schedule.",
        "学习率的调度方式。"),
    "train.warmup_ratio": (
        "Fraction of steps spent warming up.",
        "用于学习率预热的步数比例。"),
    "train.weight_decay": (
        "AdamW weight decay.",
        "AdamW 的权重衰减。"),
    "train.max_grad_norm": (
        "Gradient clipping norm (0: off).",
        "梯度裁剪的范数（0：不裁剪）。"),
    "train.optim": (
        "Optimizer. adamw_8bit needs bitsandbytes; galore_adamw needs galore-torch; apollo_adamw (full/freeze) needs apollo-torch; muon: torch.optim.Muon on the 2-D weights of the decoder blocks, AdamW on the rest; adam_mini (full/freeze, adam-mini): one second moment per block; badam (full, badam): Adam on one decoder layer at a time.",
        "优化器。adamw_8bit 需要 bitsandbytes；galore_adamw 需要 galore-torch；apollo_adamw（full/freeze）需要 apollo-torch；muon：解码层的二维权重用 torch.optim.Muon，其余用 AdamW；adam_mini（full/freeze，adam-mini）：每块一个二阶矩；badam（full，badam）：每次只用 Adam 训练一个解码层。"),
    "train.badam_switch_every": (
        "BAdam: optimizer steps before the next decoder layer trains.",
        "BAdam：训练下一个解码层之前的优化步数。"),
    "train.badam_switch_mode": (
        "BAdam: the order the layers train in (fixed: the first one only).",
        "BAdam：各层训练的顺序（fixed：只训练第一层）。"),
    "train.pure_bf16": (
        "Pure bf16 training: the weights, gradients and optimizer state in bf16, no fp32 master copy and no autocast (pure_bf16 in LLaMA-Factory; half the memory of fp32).",
        "纯 bf16 训练：权重、梯度和优化器状态都用 bf16，没有 fp32 主副本，也不用自动混合精度（LLaMA-Factory 的 pure_bf16；内存为 fp32 的一半）。"),
    "train.seed": (
        "Seed for data order, initialisation and sampling.",
        "数据顺序、初始化和采样所用的随机种子。"),
    "train.logging_steps": (
        "Emit a step event every n steps.",
        "每 n 步发出一次 step 事件。"),
    "train.save_steps": (
        "Save a checkpoint every n steps (0: only at the end).",
        "每 n 步保存一个检查点（0：只在结束时保存）。"),
    "train.save_total_limit": (
        "Keep at most this many checkpoints.",
        "最多保留这么多个检查点。"),
    "train.eval_steps": (
        "Evaluate every n steps (needs a validation set). None: at the end only.",
        "每 n 步评估一次（需要验证集）。None：只在结束时评估。"),
    "train.gradient_checkpointing": (
        "Recompute activations in backward (saves memory, costs ~30% speed).",
        "在反向传播时重新计算激活（省内存，速度约慢 30%）。"),
    "train.num_threads": (
        "CPU threads for torch. None: the number of physical cores.",
        "torch 使用的 CPU 线程数。None：物理核心数。"),
    "train.report_to": (
        "Experiment trackers besides the event stream: none, tensorboard, trackio, mlflow, "
        "wandb, swanlab, or a list (the 'track' extra installs them).",
        "事件流之外的实验记录工具：none、tensorboard、trackio、mlflow、wandb、swanlab，或由它们组成的列表（'track' "
        "扩展会安装这些工具）。"),
    "train.distributed": (
        'Several processes (forge train --nproc N): ddp (a model '
        'copy each), fsdp (sharded, FSDP2) or deepspeed (ZeRO; GPU).',
        '多个进程（forge train --nproc N）：ddp（每个进程一份模型）、fsdp（分片，FSDP2）或 deepspeed（ZeRO；需要 GPU）。'),
    "train.distributed_config": (
        'deepspeed: a preset (zero2, zero3, zero3_offload) or a '
        'DeepSpeed JSON file; fsdp: an FSDP/accelerate config file.',
        'deepspeed：预设（zero2、zero3、zero3_offload）或 DeepSpeed JSON 文件；fsdp：FSDP/accelerate 配置文件。'),
    "train.resume": (
        "If output_dir has a checkpoint, continue from the last complete one.",
        "如果 output_dir 里已有检查点，就从最后一个完整的检查点继续。"),
    "train.on_nonfinite": (
        "A step whose loss or gradient norm is NaN/inf: fail (end the run, keeping the last "
        "good checkpoint) or skip (leave the weights unchanged and go on; the run still "
        "fails after several skipped steps in a row).",
        "某一步的损失或梯度范数为 NaN/inf 时：fail（结束运行，保留最后一个正常的检查点）"
        "，或 skip（不更新权重，继续训练；连续跳过多步后运行仍会失败）。"),
    "train.allow_code": (
        "Let this config name Python code to import and run (stage.reward_funcs entries "
        "'module:function'). Off: only built-in names, or callables passed from Python.",
        "允许这个配置指定要导入并运行的 Python 代码（stage.reward_funcs 中的 'module:function'）"
        "。关闭时：只能用内置名称，或从 Python 直接传入的可调用对象。"),
    "generate.backend": (
        "Inference back end: hf (transformers), vllm (CUDA GPU, the vllm extra), llamacpp (a GGUF, llama-cpp-python).",
        "推理后端：hf（transformers）、vllm（CUDA GPU，需要 vllm 扩展）、llamacpp（GGUF "
        "文件，需要 llama-cpp-python）。"),
    "generate.max_new_tokens": (
        "Maximum new tokens per answer.",
        "每个回答最多生成的新词元数。"),
    "generate.temperature": (
        "0: greedy decoding.",
        "0：贪心解码。"),
    "generate.top_p": (
        "Nucleus sampling mass.",
        "核采样（nucleus sampling）保留的概率质量。"),
    "generate.top_k": (
        "Top-k sampling (0: off).",
        "Top-k 采样（0：关闭）。"),
    "generate.repetition_penalty": (
        "Penalty on repeated tokens (1: off).",
        "对重复词元的惩罚（1：不惩罚）。"),
    "generate.system": (
        "System prompt prepended to every chat.",
        "每次对话前都加上的系统提示词。"),
    "generate.stop": (
        "Stop strings: the answer ends before the first one (a string or a list).",
        "停止字符串：回答在遇到的第一个停止串之前结束（一个字符串或一个列表）。"),
    "generate.seed": (
        "Sampling seed: the same seed gives the same sampled answer (None: not seeded).",
        "采样种子：相同的种子给出相同的采样回答（None：不固定种子）。"),
}
