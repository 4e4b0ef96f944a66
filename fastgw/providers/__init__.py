"""fastgw.providers"""
