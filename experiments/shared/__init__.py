"""What several experiments use: the Llama decoder (`llama`, pure flax init/apply) and its GGUF
loader and file checks (`gguf_llama`, usable on its own), and the selection summaries' regret
comparisons with their one interval over selection seeds (`selection`)."""
